//! kv-net's frame decoder on a connection's bytes: client `Request`s and
//! `Response`s, peer `PeerMessage`s and `SnapshotChunk`s, `Hello`s, all in
//! one `Frame`, behind the length prefix and its size limit.
//!
//! Checks: the bytes decode the same whether they arrive whole or in
//! pieces; a decoded frame re-encodes (unless its canonical encoding is over
//! the limit) to bytes that decode to an equal frame; no frame comes out of a
//! length prefix over the limit.
#![no_main]

use bytes::BytesMut;
use flashkv_fuzz_support::FUZZ_MAX_FRAME;
use kv_net::FrameCodec;
use kv_net::frame;
use kv_net::proto::Frame;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use tokio_util::codec::Decoder;

/// Decodes frames from `data` fed `piece` bytes at a time (all at once when
/// `piece` is 0), until the end or the first error, and then at EOF.
fn decode_all(data: &[u8], piece: usize) -> (Vec<Frame>, bool) {
    let mut codec = FrameCodec::new(FUZZ_MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let step = if piece == 0 { data.len().max(1) } else { piece };
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                // The connection is closed on the first bad frame.
                Err(_) => return (frames, false),
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(f)) => {
            frames.push(f);
            (frames, true)
        }
        Ok(None) => (frames, true),
        Err(_) => (frames, false),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, wire)) = data.split_first() else {
        return;
    };
    let (whole, whole_ok) = decode_all(wire, 0);
    let (pieces, pieces_ok) = decode_all(wire, usize::from(piece % 17));
    assert_eq!(whole, pieces, "frames depend on how the bytes arrive");
    assert_eq!(whole_ok, pieces_ok, "errors depend on how the bytes arrive");

    let mut at = 0usize;
    for f in &whole {
        // Every decoded frame came from a prefix within the limit.
        let len = u32::from_be_bytes(wire[at..at + 4].try_into().expect("4 bytes")) as usize;
        assert!(
            len <= FUZZ_MAX_FRAME,
            "frame of {len} bytes passed the limit"
        );
        at += 4 + len;

        match frame::encode(f, FUZZ_MAX_FRAME) {
            Ok(bytes) => {
                let mut b = bytes;
                let mut codec = FrameCodec::new(FUZZ_MAX_FRAME);
                let again = codec
                    .decode(&mut b)
                    .expect("a re-encoded frame decodes")
                    .expect("a re-encoded frame is whole");
                assert_eq!(&again, f, "re-encoded frame decodes differently");
                assert!(b.is_empty(), "re-encoded frame left bytes over");
            }
            Err(kv_net::Error::FrameTooLarge { len, .. }) => {
                // Canonical encoding can be longer than the received one
                // (packed repeated fields sent unpacked and back).
                assert!(len > FUZZ_MAX_FRAME as u64);
                assert_eq!(len, f.compute_size());
            }
            Err(e) => panic!("a decoded frame does not re-encode: {e}"),
        }
    }
});
