//! How user data and metadata share the engine's key space, and the stored
//! value format.
//!
//! ```text
//! u <user key>                   -> value record (header + user value)
//! m applied                      -> applied index:u64be, term:u64be
//! m a <node id:u64be>            -> advertise address (UTF-8)
//! m m <node id:u64be>            -> member record (see `membership`)
//! m c <client id:u64be> <seq:u64be> -> encoded Outcome of that write
//! m C <client id:u64be>          -> highest seq applied:u64be, last write time_ms:u64be
//! ```
//!
//! Value record: `version:u8 (=1)`, `flags:u8` (0 today; bits reserved for a
//! TTL and a revision, which will append fixed fields after the header), then
//! the user's bytes. A reader rejects versions and flags it does not know, so
//! a later format can be introduced without migrating existing data.

use bytes::Bytes;

/// Prefix of user keys.
pub const USER: u8 = b'u';
/// Prefix of metadata keys.
pub const META: u8 = b'm';
/// The applied index and term.
pub const APPLIED: &[u8] = b"mapplied";

/// Version byte of the value record.
const VALUE_VERSION: u8 = 1;
/// Header bytes before the user's value.
pub const VALUE_HEADER: usize = 2;

/// The engine key of a user key.
#[must_use]
pub fn user_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(USER);
    k.extend_from_slice(key);
    k
}

/// The first engine key after every user key.
#[must_use]
pub fn user_end() -> Vec<u8> {
    vec![USER + 1]
}

/// The user key of an engine key under [`USER`].
#[must_use]
pub fn strip_user(key: &Bytes) -> Bytes {
    key.slice(1..)
}

/// The advertise address record of a node.
#[must_use]
pub fn advertise_key(node_id: u64) -> Vec<u8> {
    let mut k = b"ma".to_vec();
    k.extend_from_slice(&node_id.to_be_bytes());
    k
}

/// The member record of a node.
#[must_use]
pub fn member_key(node_id: u64) -> Vec<u8> {
    let mut k = MEMBER_PREFIX.to_vec();
    k.extend_from_slice(&node_id.to_be_bytes());
    k
}

/// Prefix of the member records.
pub const MEMBER_PREFIX: &[u8] = b"mm";

/// The de-duplication record of one write.
#[must_use]
pub fn dedup_key(client_id: u64, seq: u64) -> Vec<u8> {
    let mut k = b"mc".to_vec();
    k.extend_from_slice(&client_id.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix of all de-duplication records of a client.
#[must_use]
pub fn dedup_prefix(client_id: u64) -> Vec<u8> {
    let mut k = b"mc".to_vec();
    k.extend_from_slice(&client_id.to_be_bytes());
    k
}

/// Prefix of the per-client records.
pub const CLIENT_PREFIX: &[u8] = b"mC";

/// The highest applied seq of a client.
#[must_use]
pub fn client_max_key(client_id: u64) -> Vec<u8> {
    let mut k = b"mC".to_vec();
    k.extend_from_slice(&client_id.to_be_bytes());
    k
}

/// Encodes a user value as a stored record.
#[must_use]
pub fn encode_value(value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_HEADER + value.len());
    v.push(VALUE_VERSION);
    v.push(0);
    v.extend_from_slice(value);
    v
}

/// The user value of a stored record.
///
/// # Errors
///
/// A description of the problem when the record is not one this version
/// wrote.
pub fn decode_value(record: &Bytes) -> Result<Bytes, String> {
    match record.as_ref() {
        [VALUE_VERSION, 0, ..] => Ok(record.slice(VALUE_HEADER..)),
        [VALUE_VERSION, flags, ..] => Err(format!("value record with unknown flags {flags:#04x}")),
        [version, _, ..] => Err(format!("value record of unknown version {version}")),
        _ => Err("value record shorter than its header".into()),
    }
}

/// Reads a big-endian u64 at the start of `b`.
#[must_use]
pub fn be_u64(b: &[u8]) -> Option<u64> {
    let a: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}

/// The smallest key greater than every key starting with `prefix`, or
/// `None` when there is none (all bytes 0xff).
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_records_roundtrip_and_reject_unknown_formats() {
        let rec = Bytes::from(encode_value(b"hello"));
        assert_eq!(decode_value(&rec).unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(
            decode_value(&Bytes::from(encode_value(b""))).unwrap(),
            Bytes::new()
        );
        assert!(decode_value(&Bytes::from_static(&[2, 0, 1])).is_err());
        assert!(decode_value(&Bytes::from_static(&[1, 1])).is_err());
        assert!(decode_value(&Bytes::from_static(&[1])).is_err());
    }

    #[test]
    fn namespaces_do_not_overlap() {
        assert!(user_key(b"") > APPLIED.to_vec());
        assert!(user_key(&[0xff; 4]) < user_end());
        assert!(dedup_key(u64::MAX, u64::MAX) < user_key(b""));
    }

    #[test]
    fn prefix_end_is_the_successor() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
