//! The frame codec: a 4-byte big-endian length, then one protobuf [`Frame`].
//!
//! Decoding delegates the length prefix to tokio-util's
//! [`LengthDelimitedCodec`], which rejects an oversized prefix before
//! buffering any of the frame; the length is peeked first so the error can
//! name it. Encoding writes the prefix and the message straight into the
//! output buffer, with no intermediate copy.

use bytes::{BufMut, BytesMut};
use protobuf::{CodedOutputStream, Message};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::error::{Error, Result};
use crate::proto::Frame;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// [`Decoder`] and [`Encoder`] of length-prefixed protobuf [`Frame`]s.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max_frame_length: usize,
    /// The inner codec has consumed a header and waits for the frame's body.
    in_body: bool,
}

impl FrameCodec {
    /// A codec accepting and sending frames of at most `max_frame_length`
    /// bytes (prefix excluded).
    #[must_use]
    pub fn new(max_frame_length: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_length(HEADER_LEN)
            .max_frame_length(max_frame_length)
            .new_codec();
        FrameCodec {
            inner,
            max_frame_length,
            in_body: false,
        }
    }

    /// The configured maximum frame length.
    #[must_use]
    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    /// True while a frame's header has been consumed and its body is
    /// awaited.
    #[must_use]
    pub fn in_frame(&self) -> bool {
        self.in_body
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        if !self.in_body
            && let Some(header) = src.get(..HEADER_LEN)
        {
            let mut len = [0u8; HEADER_LEN];
            len.copy_from_slice(header);
            let len = u64::from(u32::from_be_bytes(len));
            if len > self.max_frame_length as u64 {
                return Err(Error::FrameTooLarge {
                    len,
                    max: self.max_frame_length,
                });
            }
        }
        let before = src.len();
        let body = self
            .inner
            .decode(src)
            .map_err(|e| map_codec_error(e, self.max_frame_length))?;
        match body {
            Some(body) => {
                self.in_body = false;
                Frame::parse_from_tokio_bytes(&body.freeze())
                    .map(Some)
                    .map_err(Error::Decode)
            }
            None => {
                // The inner codec consumes the header when it moves on to
                // waiting for the body.
                self.in_body = self.in_body || src.len() < before;
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && !self.in_body => Ok(None),
            None => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a frame",
            ))),
        }
    }
}

fn map_codec_error(e: std::io::Error, max: usize) -> Error {
    let too_large = e
        .get_ref()
        .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>());
    if too_large {
        Error::FrameTooLarge {
            len: max as u64 + 1,
            max,
        }
    } else {
        Error::Io(e)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<()> {
        encode_into(&frame, self.max_frame_length, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<()> {
        encode_into(frame, self.max_frame_length, dst)
    }
}

/// Appends `frame` with its length prefix to `dst`.
///
/// # Errors
///
/// [`Error::FrameTooLarge`] when the encoded frame exceeds `max`, leaving
/// `dst` untouched; [`Error::Encode`] when protobuf encoding fails.
pub fn encode_into(frame: &Frame, max: usize, dst: &mut BytesMut) -> Result<()> {
    // Also caches the sizes of nested messages for the write below.
    let len = frame.compute_size();
    if len > max as u64 {
        return Err(Error::FrameTooLarge { len, max });
    }
    // `max` fits in u32 (Options::validate), hence so does `len`.
    let len32 = u32::try_from(len).map_err(|_| Error::FrameTooLarge { len, max })?;
    let body_len = len32 as usize;
    dst.reserve(HEADER_LEN + body_len);
    dst.put_u32(len32);
    let start = dst.len();
    dst.resize(start + body_len, 0);
    let (result, written) = {
        let mut out = CodedOutputStream::bytes(&mut dst[start..]);
        let result = frame.write_to_with_cached_sizes(&mut out);
        (result, out.total_bytes_written())
    };
    match result {
        Ok(()) if written == len => Ok(()),
        Ok(()) => {
            dst.truncate(start - HEADER_LEN);
            Err(Error::Encode(protobuf::Error::from(std::io::Error::other(
                format!("encoded {written} bytes, expected {len}"),
            ))))
        }
        Err(e) => {
            dst.truncate(start - HEADER_LEN);
            Err(Error::Encode(e))
        }
    }
}

/// Encodes one frame into a new buffer (prefix included).
///
/// # Errors
///
/// As [`encode_into`].
pub fn encode(frame: &Frame, max: usize) -> Result<BytesMut> {
    let mut buf = BytesMut::new();
    encode_into(frame, max, &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Put, Request};

    fn put_frame(id: u64, value_len: usize) -> Frame {
        let mut put = Put::new();
        put.key = bytes::Bytes::from_static(b"k");
        put.value = vec![7u8; value_len].into();
        let mut req = Request::new();
        req.id = id;
        req.set_put(put);
        let mut f = Frame::new();
        f.set_request(req);
        f
    }

    #[test]
    fn roundtrip_in_pieces() {
        let mut codec = FrameCodec::new(1 << 20);
        let mut wire = BytesMut::new();
        for id in 1..=3 {
            codec.encode(put_frame(id, 1000), &mut wire).unwrap();
        }
        let wire = wire.freeze();
        // Feed one byte at a time: every frame comes out whole, once.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f.request().id);
            }
        }
        assert_eq!(got, vec![1, 2, 3]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn oversized_prefix_rejected_before_body() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF][..]);
        match codec.decode(&mut buf) {
            Err(Error::FrameTooLarge { len, max }) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, 1024);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_frame_not_encoded() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        let err = codec.encode(put_frame(1, 2000), &mut buf).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { max: 1024, .. }));
        assert!(buf.is_empty());
    }

    #[test]
    fn truncated_frame_is_an_error_at_eof() {
        let mut codec = FrameCodec::new(1 << 20);
        let mut wire = encode(&put_frame(1, 100), 1 << 20).unwrap();
        wire.truncate(wire.len() - 10);
        assert!(codec.decode(&mut wire).unwrap().is_none());
        assert!(codec.decode_eof(&mut wire).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..10_000 {
            let len = rng.gen_range(0..64usize);
            let mut body = vec![0u8; len];
            rng.fill(&mut body[..]);
            let mut buf = BytesMut::new();
            buf.put_u32(len as u32);
            buf.put_slice(&body);
            let mut codec = FrameCodec::new(1024);
            let _ = codec.decode(&mut buf);
        }
    }
}
