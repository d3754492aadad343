//! The CBOR codec every vodmesh protocol uses, with a size limit on every decode.
//!
//! - [`encode`] / [`decode`]: one value to and from CBOR bytes (cbor4ii via serde). `decode`
//!   refuses input longer than its limit before it parses a byte.
//! - [`CborCodec`]: a libp2p request-response codec: one CBOR request, one CBOR response per
//!   stream, each capped by [`Limits`].
//! - [`write_frame`] / [`read_frame`]: a length-prefixed CBOR header on a bulk stream
//!   (`u32` big-endian length, then the CBOR), after which raw bytes follow.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why bytes did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input is longer than the limit for this message.
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The bytes are not valid CBOR for the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// Why, without the "malformed message" that [`Display`](std::fmt::Display) starts with:
    /// for an error that names what did not decode itself ("malformed token: ...").
    pub fn reason(&self) -> String {
        match self {
            Self::Malformed(why) => why.clone(),
            too_large => too_large.to_string(),
        }
    }
}

impl From<DecodeError> for io::Error {
    fn from(e: DecodeError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Encodes `value` as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match cbor4ii::serde::to_vec(Vec::new(), value) {
        Ok(v) => v,
        // Serializing into a Vec only fails for types serde cannot express in CBOR (maps with
        // non-string keys are fine); every wire type here is plain data.
        Err(e) => unreachable!("wire types always encode: {e}"),
    }
}

/// Decodes one `T` from `bytes`, refusing more than `limit` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    cbor4ii::serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(describe(&e)))
}

/// Why CBOR did not decode, in words: cbor4ii's `Display` is its `Debug` (`Core(Mismatch {
/// name: "map", found: 12 })`), which reaches users through the errors that carry it.
fn describe(e: &cbor4ii::serde::DecodeError<std::convert::Infallible>) -> String {
    use cbor4ii::core::error::DecodeError as Core;
    let core = match e {
        // serde's own words: "missing field `x`", "invalid length 2, expected ...".
        cbor4ii::serde::DecodeError::Custom(why) => return why.to_string(),
        cbor4ii::serde::DecodeError::Core(core) => core,
    };
    match core {
        Core::Mismatch { name, found } => format!("expected {name}, found {}", item(*found)),
        Core::Unsupported { name, found } => format!("{} not allowed in {name}", item(*found)),
        Core::Eof { name, .. } => format!("cut short inside {name}"),
        Core::RequireLength { name, .. } => format!("{name} of an unknown length"),
        Core::RequireBorrowed { name } => format!("{name} in pieces"),
        Core::RequireUtf8 { name } => format!("{name} that is not UTF-8"),
        Core::LengthOverflow { name, .. } => format!("{name} longer than the message"),
        Core::CastOverflow { name } | Core::ArithmeticOverflow { name, .. } => {
            format!("{name} out of range")
        }
        Core::DepthOverflow { name } => format!("{name} nested too deeply"),
        other => format!("{other:?}"),
    }
}

/// The CBOR item that the initial byte `byte` starts (its major type), for [`describe`].
fn item(byte: u8) -> &'static str {
    match byte >> 5 {
        0 | 1 => "an integer",
        2 => "a byte string",
        3 => "a text string",
        4 => "an array",
        5 => "a map",
        6 => "a tag",
        _ => match byte {
            0xf4 | 0xf5 => "a boolean",
            0xf6 | 0xf7 => "null",
            0xf9..=0xfb => "a float",
            0xff => "a break",
            _ => "a simple value",
        },
    }
}

/// Reads until EOF, at most `limit` bytes; more is an error.
pub async fn read_limited<R: AsyncRead + Unpin>(io: &mut R, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Err(DecodeError::TooLarge {
            len: buf.len(),
            limit,
        }
        .into());
    }
    Ok(buf)
}

/// Size caps for one request-response protocol.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request accepted, in bytes.
    pub request: usize,
    /// Largest response accepted, in bytes.
    pub response: usize,
}

/// A request-response codec: CBOR, with [`Limits`].
pub struct CborCodec<Req, Resp> {
    limits: Limits,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> CborCodec<Req, Resp> {
    /// A codec with these caps.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new(self.limits)
    }
}

impl<Req, Resp> libp2p::request_response::Codec for CborCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send,
    Resp: Serialize + DeserializeOwned + Send,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, self.limits.request).await?;
        Ok(decode(&bytes, self.limits.request)?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, self.limits.response).await?;
        Ok(decode(&bytes, self.limits.response)?)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&encode(&req)).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&encode(&res)).await?;
        io.close().await
    }
}

/// Writes one length-prefixed CBOR frame (a stream header or a trailer).
pub async fn write_frame<W, T>(io: &mut W, value: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode(value);
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.flush().await
}

/// Reads one length-prefixed CBOR frame of at most `limit` bytes.
pub async fn read_frame<R, T>(io: &mut R, limit: usize) -> io::Result<T>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(DecodeError::TooLarge { len, limit }.into());
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(decode(&buf, limit)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        a: u32,
        b: String,
        c: Vec<u8>,
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let bytes = encode(&vec![0u8; 100]);
        assert!(matches!(
            decode::<Vec<u8>>(&bytes, 10),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    /// What a user reads when a file or a peer's message is not what it should be: words, not
    /// cbor4ii's `Debug` (`Core(Mismatch { name: "map", found: 12 })`).
    #[test]
    fn malformed_input_is_described_in_words() {
        let why = |bytes: &[u8]| match decode::<Msg>(bytes, 1024) {
            Err(DecodeError::Malformed(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(why(&[0x0c]), "expected map, found an integer");
        assert_eq!(why(&encode(&"text")), "expected map, found a text string");
        let full = encode(&Msg {
            a: 7,
            b: "hello world".into(),
            c: vec![1; 20],
        });
        assert_eq!(why(&full[..full.len() - 3]), "cut short inside u8");
        assert_eq!(
            why(&encode(
                &[("a", 1)]
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>()
            )),
            "missing field `b`"
        );
        for bytes in [&[0x0c][..], &full[..5], &[0xa1, 0x61]] {
            let why = why(bytes);
            assert!(!why.contains("Core(") && !why.contains('{'), "{why}");
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_respect_limits() {
        let msg = Msg {
            a: 1,
            b: "x".into(),
            c: vec![9; 10],
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).await.unwrap();
        buf.extend_from_slice(b"raw bytes after the header");
        let mut cur = Cursor::new(buf);
        let back: Msg = read_frame(&mut cur, 1024).await.unwrap();
        assert_eq!(back, msg);
        let mut rest = Vec::new();
        cur.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"raw bytes after the header");

        let mut big = Vec::new();
        write_frame(&mut big, &msg).await.unwrap();
        assert!(
            read_frame::<_, Msg>(&mut Cursor::new(big), 4)
                .await
                .is_err()
        );
        // A length prefix that promises more than is there.
        let lying = [0u8, 0, 0, 50, 1, 2];
        assert!(
            read_frame::<_, Msg>(&mut Cursor::new(lying), 1024)
                .await
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Msg>(&bytes, 1024);
            let _ = decode::<crate::director::Request>(&bytes, 1024);
            let _ = decode::<crate::director::Response>(&bytes, 1024);
            let _ = decode::<crate::signed::Signed>(&bytes, 1024);
        }

        #[test]
        fn truncated_messages_are_errors(cut in 0usize..40) {
            let full = encode(&Msg { a: 7, b: "hello world".into(), c: vec![1; 20] });
            let cut = cut.min(full.len() - 1);
            prop_assert!(decode::<Msg>(&full[..cut], 1024).is_err());
        }
    }
}
