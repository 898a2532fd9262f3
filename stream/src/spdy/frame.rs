//! SPDY/3.1 frames: the types, and a decoder and encoder that keep the per-direction
//! header compression state.
//!
//! Layout (all integers big-endian):
//! control frame: `1 | version:15 | type:16 | flags:8 | length:24 | payload`
//! data frame:    `0 | stream-id:31 | flags:8 | length:24 | payload`

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::compress::{CompressionError, HeaderDeflater, HeaderInflater};

/// The only SPDY version spoken.
pub const VERSION: u16 = 3;
/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// The largest payload the 24-bit length field can describe.
pub const MAX_PAYLOAD: usize = 0x00ff_ffff;

/// FIN: the sender will send nothing more on this stream.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL (SYN_STREAM only): the receiver must not send on this stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// CLEAR_SETTINGS (SETTINGS only).
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes (SPDY/3 §2.4.2).
pub mod rst {
    /// Generic protocol error.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// A frame for a stream that is not open.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// The stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// Internal error.
    pub const INTERNAL_ERROR: u32 = 6;
    /// The stream id was already in use.
    pub const STREAM_IN_USE: u32 = 8;
}

/// GOAWAY status codes.
pub mod goaway {
    /// Normal session teardown.
    pub const OK: u32 = 0;
    /// The peer violated the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// We failed internally.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// An ordered SPDY header block. Names are lowercase; a value holding several
/// values joins them with NUL, as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderBlock {
    entries: Vec<(String, String)>,
}

impl HeaderBlock {
    /// An empty block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a header; the name is lowercased as SPDY requires.
    pub fn insert(&mut self, name: &str, value: &str) {
        self.entries
            .push((name.to_ascii_lowercase(), value.to_owned()));
    }

    /// The first value of `name` (case-insensitive), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(v.as_str()))
    }

    /// All (name, raw value) pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the block holds no header.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        out.put_u32(len_u32(self.entries.len())?);
        for (name, value) in &self.entries {
            out.put_u32(len_u32(name.len())?);
            out.put_slice(name.as_bytes());
            out.put_u32(len_u32(value.len())?);
            out.put_slice(value.as_bytes());
        }
        Ok(())
    }

    fn decode(mut raw: &[u8]) -> Result<Self, FrameError> {
        let count = take_u32(&mut raw).ok_or(FrameError::TruncatedHeaderBlock)?;
        // Every header needs at least 8 bytes of lengths: a cheap bound on the count.
        if usize::try_from(count).map_or(true, |c| c > raw.len() / 8) {
            return Err(FrameError::TruncatedHeaderBlock);
        }
        let mut entries = Vec::new();
        for _ in 0..count {
            let name = take_string(&mut raw)?;
            if name.is_empty() {
                return Err(FrameError::EmptyHeaderName);
            }
            let value = take_string(&mut raw)?;
            entries.push((name.to_ascii_lowercase(), value));
        }
        if !raw.is_empty() {
            return Err(FrameError::TrailingHeaderBytes(raw.len()));
        }
        Ok(Self { entries })
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for HeaderBlock {
    fn from_iter<T: IntoIterator<Item = (&'a str, &'a str)>>(iter: T) -> Self {
        let mut block = HeaderBlock::new();
        for (n, v) in iter {
            block.insert(n, v);
        }
        block
    }
}

/// One SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The peer opens a stream.
    SynStream {
        /// New stream id (odd from clients).
        stream_id: u32,
        /// Stream this one is associated with (server push; 0 otherwise).
        associated_to: u32,
        /// Priority 0 (highest) ..= 7.
        priority: u8,
        /// Credential slot (SPDY/3 leftover).
        slot: u8,
        /// FIN and/or UNIDIRECTIONAL.
        flags: u8,
        /// The stream's headers.
        headers: HeaderBlock,
    },
    /// Accepts a stream the peer opened.
    SynReply {
        /// Stream being accepted.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// Reply headers.
        headers: HeaderBlock,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream aborted.
        stream_id: u32,
        /// Reason, see [`rst`].
        status: u32,
    },
    /// Connection settings (ignored by spdystream and by us, but parsed).
    Settings {
        /// CLEAR_SETTINGS.
        flags: u8,
        /// (flags, id, value) entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// Liveness probe; the receiver echoes the id back.
    Ping {
        /// Opaque id (odd from clients).
        id: u32,
    },
    /// The sender will open no more streams.
    GoAway {
        /// Last stream id the sender processed.
        last_good_stream_id: u32,
        /// Reason, see [`goaway`].
        status: u32,
    },
    /// Additional headers on an open stream.
    Headers {
        /// Stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// The headers.
        headers: HeaderBlock,
    },
    /// Flow-control credit (spdystream never relies on it; we accept and ignore it).
    WindowUpdate {
        /// Stream (0 for the connection).
        stream_id: u32,
        /// Extra bytes the receiver may take.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// Stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// Payload bytes.
        data: Bytes,
    },
    /// A control frame type we do not know (NOOP, CREDENTIAL, ...): skipped.
    Unknown {
        /// Its type number.
        frame_type: u16,
    },
}

impl Frame {
    /// True when the frame carries FIN.
    pub fn is_fin(&self) -> bool {
        match self {
            Frame::SynStream { flags, .. }
            | Frame::SynReply { flags, .. }
            | Frame::Headers { flags, .. }
            | Frame::Data { flags, .. } => flags & FLAG_FIN != 0,
            _ => false,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
            Frame::Data { .. } => "DATA",
            Frame::Unknown { .. } => "unknown control frame",
        }
    }
}

/// Why a frame could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The control frame is not SPDY/3.
    #[error("control frame has SPDY version {0}; only version 3 is supported")]
    UnsupportedVersion(u16),
    /// A control frame's payload length does not fit its type.
    #[error("{frame} frame has a {len}-byte payload; it needs {expected}")]
    BadLength {
        /// Frame type name.
        frame: &'static str,
        /// Payload length found.
        len: usize,
        /// What the type requires.
        expected: &'static str,
    },
    /// A stream frame names stream 0.
    #[error("{0} frame names stream 0")]
    ZeroStreamId(&'static str),
    /// A control frame is larger than we buffer.
    #[error("{frame} frame of {len} bytes exceeds the {max}-byte limit for control frames")]
    ControlFrameTooLarge {
        /// Frame type name.
        frame: &'static str,
        /// Its length.
        len: usize,
        /// Our limit.
        max: usize,
    },
    /// A payload we were asked to send does not fit a 24-bit length.
    #[error("{frame} payload of {len} bytes does not fit one frame")]
    PayloadTooLarge {
        /// Frame type name.
        frame: &'static str,
        /// Its length.
        len: usize,
    },
    /// Header block (de)compression failed.
    #[error("header block of {frame} frame")]
    Compression {
        /// Frame type name.
        frame: &'static str,
        /// Cause.
        #[source]
        source: CompressionError,
    },
    /// The decompressed header block ended early.
    #[error("header block is truncated")]
    TruncatedHeaderBlock,
    /// The decompressed header block has bytes after its last header.
    #[error("header block has {0} bytes after its last header")]
    TrailingHeaderBytes(usize),
    /// A header name or value is not UTF-8.
    #[error("header name or value is not UTF-8")]
    HeaderNotUtf8,
    /// A header name is empty.
    #[error("header block has an empty header name")]
    EmptyHeaderName,
}

fn len_u32(n: usize) -> Result<u32, FrameError> {
    u32::try_from(n).map_err(|_| FrameError::PayloadTooLarge {
        frame: "header block",
        len: n,
    })
}

fn take_u32(raw: &mut &[u8]) -> Option<u32> {
    if raw.len() < 4 {
        return None;
    }
    Some(raw.get_u32())
}

fn take_string(raw: &mut &[u8]) -> Result<String, FrameError> {
    let len = take_u32(raw).ok_or(FrameError::TruncatedHeaderBlock)?;
    let len = usize::try_from(len).map_err(|_| FrameError::TruncatedHeaderBlock)?;
    if raw.len() < len {
        return Err(FrameError::TruncatedHeaderBlock);
    }
    let (s, rest) = raw.split_at(len);
    *raw = rest;
    String::from_utf8(s.to_vec()).map_err(|_| FrameError::HeaderNotUtf8)
}

fn type_name(frame_type: u16) -> &'static str {
    match frame_type {
        TYPE_SYN_STREAM => "SYN_STREAM",
        TYPE_SYN_REPLY => "SYN_REPLY",
        TYPE_RST_STREAM => "RST_STREAM",
        TYPE_SETTINGS => "SETTINGS",
        TYPE_PING => "PING",
        TYPE_GOAWAY => "GOAWAY",
        TYPE_HEADERS => "HEADERS",
        TYPE_WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => "unknown control",
    }
}

/// Decodes the frames one peer sends, keeping that peer's header compression context.
#[derive(Debug)]
pub struct FrameDecoder {
    inflater: HeaderInflater,
    max_control: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(1 << 20, 256 << 10)
    }
}

impl FrameDecoder {
    /// `max_control` bounds a control frame's payload, `max_headers` a decompressed
    /// header block.
    pub fn new(max_control: usize, max_headers: usize) -> Self {
        Self {
            inflater: HeaderInflater::new(max_headers),
            max_control,
        }
    }

    /// Takes one complete frame off the front of `buf`, or returns `None` when more
    /// bytes are needed. After an error the connection must be dropped: the header
    /// compression context may be out of step with the peer.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
        let control = first & 0x8000_0000 != 0;
        if control {
            let version = u16::try_from((first >> 16) & 0x7fff).unwrap_or(u16::MAX);
            let frame_type = u16::try_from(first & 0xffff).unwrap_or(u16::MAX);
            if version != VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
            if len > self.max_control {
                return Err(FrameError::ControlFrameTooLarge {
                    frame: type_name(frame_type),
                    len,
                    max: self.max_control,
                });
            }
            if buf.len() < FRAME_HEADER_LEN + len {
                buf.reserve(FRAME_HEADER_LEN + len - buf.len());
                return Ok(None);
            }
            buf.advance(FRAME_HEADER_LEN);
            let payload = buf.split_to(len).freeze();
            self.decode_control(frame_type, flags, payload).map(Some)
        } else {
            if buf.len() < FRAME_HEADER_LEN + len {
                buf.reserve((FRAME_HEADER_LEN + len - buf.len()).min(1 << 20));
                return Ok(None);
            }
            let stream_id = first & 0x7fff_ffff;
            buf.advance(FRAME_HEADER_LEN);
            let data = buf.split_to(len).freeze();
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId("DATA"));
            }
            Ok(Some(Frame::Data {
                stream_id,
                flags,
                data,
            }))
        }
    }

    fn headers(
        &mut self,
        frame: &'static str,
        compressed: &[u8],
    ) -> Result<HeaderBlock, FrameError> {
        let raw = self
            .inflater
            .inflate(compressed)
            .map_err(|source| FrameError::Compression { frame, source })?;
        HeaderBlock::decode(&raw)
    }

    fn decode_control(
        &mut self,
        frame_type: u16,
        flags: u8,
        mut p: Bytes,
    ) -> Result<Frame, FrameError> {
        let name = type_name(frame_type);
        let need = |min: usize, exact: bool, expected: &'static str, len: usize| {
            if len < min || (exact && len != min) {
                Err(FrameError::BadLength {
                    frame: name,
                    len,
                    expected,
                })
            } else {
                Ok(())
            }
        };
        let nonzero = |id: u32| {
            if id == 0 {
                Err(FrameError::ZeroStreamId(name))
            } else {
                Ok(id)
            }
        };
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                need(10, false, "at least 10 bytes", p.len())?;
                // Fields are evaluated in the order written: the order on the wire.
                Frame::SynStream {
                    stream_id: nonzero(p.get_u32() & 0x7fff_ffff)?,
                    associated_to: p.get_u32() & 0x7fff_ffff,
                    priority: p.get_u8() >> 5,
                    slot: p.get_u8(),
                    flags,
                    headers: self.headers(name, &p)?,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(4, false, "at least 4 bytes", p.len())?;
                let stream_id = nonzero(p.get_u32() & 0x7fff_ffff)?;
                let headers = self.headers(name, &p)?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need(8, true, "exactly 8 bytes", p.len())?;
                let stream_id = nonzero(p.get_u32() & 0x7fff_ffff)?;
                Frame::RstStream {
                    stream_id,
                    status: p.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                need(4, false, "at least 4 bytes", p.len())?;
                let count = p.get_u32();
                if usize::try_from(count).map_or(true, |c| c.checked_mul(8) != Some(p.len())) {
                    return Err(FrameError::BadLength {
                        frame: name,
                        len: p.len() + 4,
                        expected: "4 + 8 bytes per entry",
                    });
                }
                let mut entries = Vec::new();
                while p.has_remaining() {
                    let word = p.get_u32();
                    let entry_flags = u8::try_from(word >> 24).unwrap_or(0);
                    entries.push((entry_flags, word & 0x00ff_ffff, p.get_u32()));
                }
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                need(4, true, "exactly 4 bytes", p.len())?;
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                need(8, true, "exactly 8 bytes", p.len())?;
                Frame::GoAway {
                    last_good_stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(8, true, "exactly 8 bytes", p.len())?;
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(frame)
    }
}

/// Encodes the frames we send, keeping our header compression context.
#[derive(Debug)]
pub struct FrameEncoder {
    deflater: HeaderDeflater,
}

impl FrameEncoder {
    /// A fresh encoder (a new connection).
    pub fn new() -> Result<Self, FrameError> {
        Ok(Self {
            deflater: HeaderDeflater::new().map_err(|source| FrameError::Compression {
                frame: "any",
                source,
            })?,
        })
    }

    fn compressed(
        &mut self,
        frame: &'static str,
        headers: &HeaderBlock,
    ) -> Result<Vec<u8>, FrameError> {
        let mut raw = Vec::new();
        headers.encode(&mut raw)?;
        let mut out = Vec::new();
        self.deflater
            .deflate(&raw, &mut out)
            .map_err(|source| FrameError::Compression { frame, source })?;
        Ok(out)
    }

    /// Appends the wire form of `frame` to `dst`.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let name = frame.name();
        let mut payload: Vec<u8> = Vec::new();
        let (frame_type, flags) = match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(FrameError::PayloadTooLarge {
                        frame: name,
                        len: data.len(),
                    });
                }
                dst.reserve(FRAME_HEADER_LEN + data.len());
                dst.put_u32(stream_id & 0x7fff_ffff);
                put_flags_len(dst, *flags, data.len());
                dst.put_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(associated_to & 0x7fff_ffff);
                payload.put_u8((priority & 0x7) << 5);
                payload.put_u8(*slot);
                let block = self.compressed(name, headers)?;
                payload.extend_from_slice(&block);
                (TYPE_SYN_STREAM, *flags)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                let block = self.compressed(name, headers)?;
                payload.extend_from_slice(&block);
                let t = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                (t, *flags)
            }
            Frame::RstStream { stream_id, status } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(*status);
                (TYPE_RST_STREAM, 0)
            }
            Frame::Settings { flags, entries } => {
                payload.put_u32(len_u32(entries.len())?);
                for (f, id, value) in entries {
                    payload.put_u32(u32::from(*f) << 24 | (id & 0x00ff_ffff));
                    payload.put_u32(*value);
                }
                (TYPE_SETTINGS, *flags)
            }
            Frame::Ping { id } => {
                payload.put_u32(*id);
                (TYPE_PING, 0)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                payload.put_u32(last_good_stream_id & 0x7fff_ffff);
                payload.put_u32(*status);
                (TYPE_GOAWAY, 0)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(delta & 0x7fff_ffff);
                (TYPE_WINDOW_UPDATE, 0)
            }
            Frame::Unknown { frame_type } => (*frame_type, 0),
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge {
                frame: name,
                len: payload.len(),
            });
        }
        dst.reserve(FRAME_HEADER_LEN + payload.len());
        dst.put_u16(0x8000 | VERSION);
        dst.put_u16(frame_type);
        put_flags_len(dst, flags, payload.len());
        dst.put_slice(&payload);
        Ok(())
    }
}

fn put_flags_len(dst: &mut BytesMut, flags: u8, len: usize) {
    // Callers checked len <= MAX_PAYLOAD, so the top byte of the u32 is free.
    let len = u32::try_from(len & MAX_PAYLOAD).unwrap_or(0);
    dst.put_u32(u32::from(flags) << 24 | len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(pairs: &[(&str, &str)]) -> HeaderBlock {
        pairs.iter().copied().collect()
    }

    fn every_frame_type() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                slot: 0,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                headers: hb(&[("streamtype", "error"), ("port", "80")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: HeaderBlock::new(),
            },
            Frame::RstStream {
                stream_id: 7,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: FLAG_CLEAR_SETTINGS,
                entries: vec![(1, 4, 100), (0, 7, 65536)],
            },
            Frame::Ping { id: 0xdead_beef },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: goaway::PROTOCOL_ERROR,
            },
            Frame::Headers {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: hb(&[("x-multi", "a\0b")]),
            },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 65536,
            },
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: Bytes::from_static(b"some payload"),
            },
            Frame::Data {
                stream_id: 0x7fff_ffff,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
        ]
    }

    #[test]
    fn every_frame_type_round_trips_on_one_connection() {
        let mut enc = FrameEncoder::new().unwrap();
        let mut dec = FrameDecoder::default();
        let mut wire = BytesMut::new();
        let frames = every_frame_type();
        for f in &frames {
            enc.encode(f, &mut wire).unwrap();
        }
        // Feed the wire one byte at a time: partial frames must wait, not fail.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn header_lookups_ignore_case_and_take_the_first_value() {
        let h = hb(&[("StreamType", "stdout"), ("x-multi", "a\0b")]);
        assert_eq!(h.get("streamtype"), Some("stdout"));
        assert_eq!(h.get("STREAMTYPE"), Some("stdout"));
        assert_eq!(h.get("x-multi"), Some("a"));
        assert_eq!(h.get("missing"), None);
    }

    /// Frames written by github.com/moby/spdystream v0.5.1's framer (the Go
    /// library under client-go), captured once with a throwaway Go program:
    /// SYN_STREAM x3 (one continuous zlib context), SYN_REPLY, DATA, DATA+FIN,
    /// PING, RST_STREAM, SETTINGS, HEADERS+FIN, WINDOW_UPDATE, GOAWAY.
    #[test]
    fn decodes_frames_written_by_the_go_spdystream_framer() {
        let mut buf = BytesMut::from(&include_bytes!("testdata_go_frames.bin")[..]);
        let mut dec = FrameDecoder::default();
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty());
        assert_eq!(frames.len(), 12);
        let expected_headers = [
            hb(&[("streamtype", "error")]),
            hb(&[("streamtype", "stdin")]),
        ];
        for (i, want) in expected_headers.iter().enumerate() {
            match &frames[i] {
                Frame::SynStream {
                    stream_id, headers, ..
                } => {
                    assert_eq!(*stream_id, 1 + 2 * u32::try_from(i).unwrap());
                    assert_eq!(headers, want);
                }
                other => panic!("frame {i} is {other:?}"),
            }
        }
        match &frames[2] {
            Frame::SynStream { headers, .. } => {
                assert_eq!(headers.get("streamtype"), Some("data"));
                assert_eq!(headers.get("port"), Some("8080"));
                // Go canonicalises then spdystream lowercases: requestID -> requestid.
                assert_eq!(headers.get("requestid"), Some("0"));
            }
            other => panic!("frame 2 is {other:?}"),
        }
        assert_eq!(
            frames[3],
            Frame::SynReply {
                stream_id: 2,
                flags: 0,
                headers: HeaderBlock::new()
            }
        );
        assert_eq!(
            frames[4],
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: Bytes::from_static(b"hello\n")
            }
        );
        assert!(frames[5].is_fin());
        assert_eq!(frames[6], Frame::Ping { id: 1 });
        assert_eq!(
            frames[7],
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL
            }
        );
        assert_eq!(
            frames[8],
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 65536)]
            }
        );
        match &frames[9] {
            Frame::Headers {
                stream_id: 3,
                flags: FLAG_FIN,
                headers,
            } => assert_eq!(headers.get("x-extra"), Some("a")),
            other => panic!("frame 9 is {other:?}"),
        }
        assert_eq!(
            frames[10],
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 1000
            }
        );
        assert_eq!(
            frames[11],
            Frame::GoAway {
                last_good_stream_id: 5,
                status: goaway::OK
            }
        );
    }

    /// Everything client-go v0.37.0's SPDY executor sent after the 101 for
    /// `exec -i cat` with stdin "captured stdin\n" (recorded through a TCP proxy
    /// in front of this server): four SYN_STREAMs sharing one zlib context, the
    /// stdin bytes, then FIN on stdin.
    #[test]
    fn decodes_a_real_client_go_exec_session() {
        let mut buf = BytesMut::from(&include_bytes!("testdata_clientgo_exec.bin")[..]);
        let mut dec = FrameDecoder::default();
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty());
        let opened: Vec<(u32, &str)> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::SynStream {
                    stream_id, headers, ..
                } => Some((*stream_id, headers.get("streamtype").unwrap_or(""))),
                _ => None,
            })
            .collect();
        assert_eq!(
            opened,
            [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")]
        );
        assert!(frames.contains(&Frame::Data {
            stream_id: 3,
            flags: 0,
            data: Bytes::from_static(b"captured stdin\n"),
        }));
        assert_eq!(
            frames.last(),
            Some(&Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::new(),
            })
        );
    }

    #[test]
    fn our_frames_match_the_go_framer_byte_for_byte_where_no_compression_is_involved() {
        let go = include_bytes!("testdata_go_frames.bin");
        let mut enc = FrameEncoder::new().unwrap();
        let mut ours = BytesMut::new();
        for f in [
            Frame::Ping { id: 1 },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 65536)],
            },
        ] {
            enc.encode(&f, &mut ours).unwrap();
        }
        let needle: &[u8] = &ours;
        assert!(go.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn malformed_frames_are_errors() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "version 2",
                vec![0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1],
            ),
            ("short ping", vec![0x80, 0x03, 0x00, 0x06, 0, 0, 0, 2, 0, 1]),
            (
                "long rst",
                vec![
                    0x80, 0x03, 0x00, 0x03, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 1, 0,
                ],
            ),
            (
                "rst stream 0",
                vec![0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],
            ),
            ("data stream 0", vec![0, 0, 0, 0, 0, 0, 0, 1, b'x']),
            (
                "settings count",
                vec![0x80, 0x03, 0x00, 0x04, 0, 0, 0, 4, 0, 0, 0, 5],
            ),
            (
                "syn_stream garbage headers",
                vec![
                    0x80, 0x03, 0x00, 0x01, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xde, 0xad,
                ],
            ),
            (
                "huge control",
                vec![0x80, 0x03, 0x00, 0x01, 0, 0xff, 0xff, 0xff],
            ),
        ];
        for (what, bytes) in cases {
            let mut dec = FrameDecoder::default();
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(dec.decode(&mut buf).is_err(), "{what} decoded");
        }
    }

    #[test]
    fn header_block_with_absurd_count_is_an_error() {
        // Count says 2^32-1 headers; must fail fast without allocating them.
        let mut raw = Vec::new();
        raw.put_u32(u32::MAX);
        let mut d = HeaderDeflater::new().unwrap();
        let mut c = Vec::new();
        d.deflate(&raw, &mut c).unwrap();
        let mut wire = BytesMut::new();
        wire.put_u16(0x8003);
        wire.put_u16(TYPE_SYN_REPLY);
        wire.put_u32(u32::try_from(4 + c.len()).unwrap());
        wire.put_u32(1);
        wire.put_slice(&c);
        let err = FrameDecoder::default().decode(&mut wire).unwrap_err();
        assert!(matches!(err, FrameError::TruncatedHeaderBlock), "{err}");
    }

    /// Random and mutated inputs never panic: the decoder either waits, yields
    /// frames or returns an error.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut enc = FrameEncoder::new().unwrap();
        let mut valid = BytesMut::new();
        for f in every_frame_type() {
            enc.encode(&f, &mut valid).unwrap();
        }
        let go = include_bytes!("testdata_go_frames.bin");
        // xorshift: deterministic, no dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..4000 {
            let mut input: Vec<u8> = match round % 3 {
                0 => (0..(next() % 200)).map(|_| (next() & 0xff) as u8).collect(),
                1 => valid.to_vec(),
                _ => go.to_vec(),
            };
            if round % 3 != 0 {
                for _ in 0..(1 + next() % 4) {
                    let len = u64::try_from(input.len()).unwrap();
                    let at = usize::try_from(next() % len).unwrap();
                    input[at] = (next() & 0xff) as u8;
                }
                if next() % 2 == 0 {
                    let cut =
                        usize::try_from(next() % u64::try_from(input.len()).unwrap()).unwrap();
                    input.truncate(cut);
                }
            }
            let mut dec = FrameDecoder::new(4096, 4096);
            let mut buf = BytesMut::from(&input[..]);
            for _ in 0..64 {
                match dec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
