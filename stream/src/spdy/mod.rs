//! SPDY/3.1 as github.com/moby/spdystream (the library under client-go) speaks it:
//! the frame codec with zlib header compression ([`frame`], [`compress`]) and a
//! server-side session that multiplexes streams over one connection ([`session`]).

pub mod compress;
pub mod frame;

pub use frame::{Frame, FrameDecoder, FrameEncoder, FrameError, HeaderBlock};
pub mod session;

pub use session::{ClosedSignal, Session, SessionConfig, SpdyStream, StreamReader, StreamWriter};
