//! Reading WAL segments back: replay at recovery, in both layouts (see the
//! parent module), with the torn-tail rules that tell a crash from damage.

use std::fs::OpenOptions;
use std::path::Path;

use super::{GROUP_HEADER_LEN, HEADER_SEED_MIX, MAGIC, seal_group, seeded_crc};
use crate::batch::{self, Op};
use crate::error::{Error, IoContext, Result};
use crate::record;

/// Replays segment `path`, calling `apply(first_seq, ops)` for each batch in
/// order. With `last_segment`, a torn tail is cut off the file (it was never
/// acknowledged); in any other segment it is corruption.
///
/// # Errors
///
/// [`Error::Corruption`] naming the file and offset of a damaged record, or
/// whatever `apply` returns.
///
/// `next_seq` carries sequence continuity across the segments of one
/// recovery: each batch must start right after the previous one ended (in
/// this segment or an earlier one), so a segment that lost records at its
/// end (zeroed or cut pages, which alone look like a clean end) is reported
/// as corruption once a later batch shows the hole, instead of being
/// replayed without them.
pub(crate) fn replay(
    path: &Path,
    last_segment: bool,
    next_seq: &mut Option<u64>,
    mut apply: impl FnMut(u64, &[Op<'_>]) -> Result<()>,
) -> Result<()> {
    let data = std::fs::read(path).ctx(path)?;
    let recs = match grouped_seed(&data) {
        Some((seed, start)) => parse_groups(path, &data, start, seed, last_segment)?,
        None if last_segment => record::parse_last_reserved(path, &data)?,
        None => record::parse_all(path, &data, false)?,
    };
    for (offset, payload) in &recs.records {
        let (seq, ops) = batch::decode_wal_payload(payload)
            .ok_or_else(|| Error::corruption(path, *offset, "malformed write batch"))?;
        if let Some(expected) = *next_seq
            && seq != expected
        {
            return Err(Error::corruption(
                path,
                *offset,
                format!(
                    "write batch starts at sequence {seq}, but the log before it ended at \
                     {}: records are missing",
                    expected.saturating_sub(1)
                ),
            ));
        }
        *next_seq = seq.checked_add(ops.len() as u64);
        apply(seq, &ops)?;
    }
    if let Some(at) = recs.torn_at {
        let f = OpenOptions::new().write(true).open(path).ctx(path)?;
        f.set_len(at).ctx(path)?;
        f.sync_all().ctx(path)?;
    }
    Ok(())
}

/// Recomputes every checksum of a segment in the group layout (header
/// record, group headers and bodies, the records inside), so that a fuzzer's
/// changes to lengths and contents get past the checksums. Stops at the
/// first length that runs past the end. Other bytes are left alone.
pub(crate) fn repair_checksums(buf: &mut [u8], repair_records: impl Fn(&mut [u8])) {
    // The header record first: then its seed can be read.
    let Some(len) = buf
        .first_chunk::<4>()
        .map(|l| u32::from_le_bytes(*l) as usize)
    else {
        return;
    };
    let Some(end) = len
        .checked_add(record::HEADER_LEN)
        .filter(|&e| e <= buf.len())
    else {
        return;
    };
    repair_records(&mut buf[..end]);
    let Some((seed, mut pos)) = grouped_seed(buf) else {
        return;
    };
    while let Some(h) = buf.get(pos..pos + GROUP_HEADER_LEN) {
        if h.iter().all(|&b| b == 0) {
            return;
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&h[0..8]);
        let Some(body_end) = usize::try_from(u64::from_le_bytes(len))
            .ok()
            .and_then(|l| (pos + GROUP_HEADER_LEN).checked_add(l))
            .filter(|&e| e <= buf.len())
        else {
            return;
        };
        let (head, rest) = buf[pos..body_end].split_at_mut(GROUP_HEADER_LEN);
        repair_records(rest);
        if let Ok(header) = <&mut [u8; GROUP_HEADER_LEN]>::try_from(head) {
            seal_group(header, rest, seed);
        }
        pos = body_end;
    }
}

/// Whether segment `path` holds no write batch at all (a torn tail does not
/// count).
///
/// # Errors
///
/// The file cannot be read, or it is damaged.
pub(crate) fn holds_no_records(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).ctx(path)?;
    let recs = match grouped_seed(&data) {
        Some((seed, start)) => parse_groups(path, &data, start, seed, true)?,
        None => record::parse_last_reserved(path, &data)?,
    };
    Ok(recs.records.is_empty())
}

/// Whether `data` starts with the header of a segment made of groups.
pub(crate) fn is_grouped(data: &[u8]) -> bool {
    grouped_seed(data).is_some()
}

/// The checksum seed and the offset of the first group, when `data` starts
/// with the header of a segment made of groups.
fn grouped_seed(data: &[u8]) -> Option<(u32, usize)> {
    let first = record::parse_first(data)?;
    let (payload, next) = first;
    let seed = payload.strip_prefix(MAGIC.as_slice())?;
    let seed: [u8; 4] = seed.try_into().ok()?;
    Some((u32::from_le_bytes(seed), next))
}

/// Why the group at some offset is not intact.
enum BadGroup {
    /// Fewer bytes than a header, or a body that runs past the end.
    CutShort,
    Damaged(&'static str),
}

/// The body of the intact group at `pos` and the offset after it.
fn group_at(data: &[u8], pos: usize, seed: u32) -> std::result::Result<(&[u8], usize), BadGroup> {
    let Some(header) = data
        .get(pos..)
        .and_then(|d| d.first_chunk::<GROUP_HEADER_LEN>())
    else {
        return Err(BadGroup::CutShort);
    };
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if seeded_crc(seed ^ HEADER_SEED_MIX, &header[0..12]) != word(12) {
        return Err(BadGroup::Damaged("WAL group header checksum mismatch"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[0..8]);
    let start = pos + GROUP_HEADER_LEN;
    let body = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .and_then(|len| data.get(start..start.checked_add(len)?))
        .ok_or(BadGroup::CutShort)?;
    if seeded_crc(seed, body) != word(8) {
        return Err(BadGroup::Damaged("WAL group checksum mismatch"));
    }
    Ok((body, start + body.len()))
}

/// Whether an intact group starts anywhere after `pos`. Runs of zeros are
/// skipped: a header of zeros is never intact.
fn intact_group_after(data: &[u8], pos: usize, seed: u32) -> bool {
    let mut q = pos + 1;
    while q + GROUP_HEADER_LEN <= data.len() {
        if data[q] == 0 && data[q..q + GROUP_HEADER_LEN].iter().all(|&b| b == 0) {
            match data[q + GROUP_HEADER_LEN..].iter().position(|&b| b != 0) {
                Some(i) => q += 1 + i,
                None => return false,
            }
            continue;
        }
        if group_at(data, q, seed).is_ok() {
            return true;
        }
        q += 1;
    }
    false
}

/// Parses the groups of a segment from `start`. In the last segment a group
/// that is not intact is a torn tail unless an intact group follows it; in
/// any other segment (complete before the next one was created) it is
/// corruption. Inside an intact group every record must be intact.
fn parse_groups<'a>(
    path: &Path,
    data: &'a [u8],
    start: usize,
    seed: u32,
    last_segment: bool,
) -> Result<record::Records<'a>> {
    let mut records = Vec::new();
    let mut pos = start;
    while pos < data.len() {
        if data[pos..].iter().all(|&b| b == 0) {
            break;
        }
        match group_at(data, pos, seed) {
            Ok((body, next)) => {
                let base = (pos + GROUP_HEADER_LEN) as u64;
                for (offset, payload) in record::parse_all(path, body, false)
                    .map_err(|e| e.shifted(base))?
                    .records
                {
                    records.push((base + offset, payload));
                }
                pos = next;
            }
            Err(_) if last_segment && !intact_group_after(data, pos, seed) => {
                return Ok(record::Records {
                    records,
                    torn_at: Some(pos as u64),
                });
            }
            Err(BadGroup::CutShort) => {
                return Err(Error::corruption(path, pos as u64, "incomplete WAL group"));
            }
            Err(BadGroup::Damaged(why)) => return Err(Error::corruption(path, pos as u64, why)),
        }
    }
    Ok(record::Records {
        records,
        torn_at: None,
    })
}
