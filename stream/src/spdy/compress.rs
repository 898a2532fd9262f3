//! SPDY/3 header block compression.
//!
//! Each direction of a SPDY connection is one continuous zlib stream primed with the
//! SPDY/3 dictionary; every header block ends with a sync flush so the peer can
//! decode it without waiting for more input. Losing a byte of either stream breaks
//! every later header block, so the compressor and decompressor live exactly as long
//! as the connection.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The SPDY/3 header compression dictionary (1423 bytes, from the SPDY/3 draft).
pub const DICTIONARY: &[u8] = include_bytes!("spdy3_dictionary.bin");

/// The zlib dictionary id (Adler-32) of [`DICTIONARY`].
pub const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// Errors of header block (de)compression.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    /// The peer's zlib stream is corrupt or out of sync with ours.
    #[error("corrupt header block compression stream")]
    Inflate(#[source] flate2::DecompressError),
    /// The peer primed its zlib stream with a dictionary other than SPDY/3's.
    #[error("header block asks for zlib dictionary {0:#010x}, not the SPDY/3 dictionary")]
    WrongDictionary(u32),
    /// The decompressed header block is larger than we accept.
    #[error("decompressed header block exceeds {0} bytes")]
    TooLarge(usize),
    /// The compressed bytes of a frame ended in the middle of a header block.
    #[error("compressed header block is incomplete")]
    Incomplete,
    /// zlib refused to compress our own header block.
    #[error("compressing a header block failed")]
    Deflate(#[source] flate2::CompressError),
}

/// Decompresses the header blocks one peer sends, in order.
pub struct HeaderInflater {
    z: Decompress,
    max_block: usize,
}

impl std::fmt::Debug for HeaderInflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderInflater")
            .field("total_in", &self.z.total_in())
            .field("total_out", &self.z.total_out())
            .finish()
    }
}

impl HeaderInflater {
    /// A fresh decompression context; `max_block` bounds one decompressed block.
    pub fn new(max_block: usize) -> Self {
        Self {
            z: Decompress::new(true),
            max_block,
        }
    }

    /// Decompresses the compressed header bytes of one frame.
    pub fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, CompressionError> {
        let mut out: Vec<u8> = Vec::with_capacity(input.len().saturating_mul(4).clamp(64, 8192));
        let mut consumed = 0usize;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= self.max_block {
                    return Err(CompressionError::TooLarge(self.max_block));
                }
                let grow = out.capacity().min(self.max_block - out.len()).max(64);
                out.reserve(grow);
            }
            let in_before = self.z.total_in();
            let out_before = out.len();
            let result = self
                .z
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.z.total_in() - in_before)
                .map_err(|_| CompressionError::Incomplete)?;
            consumed += used;
            match result {
                Ok(Status::StreamEnd) => {
                    // SPDY never ends the stream; a peer that does cannot send more headers.
                    if consumed != input.len() {
                        return Err(CompressionError::Incomplete);
                    }
                    break;
                }
                Ok(_) => {
                    let progressed = used > 0 || out.len() > out_before;
                    if consumed == input.len() && out.len() < out.capacity() {
                        break;
                    }
                    if !progressed && out.len() < out.capacity() {
                        return Err(CompressionError::Incomplete);
                    }
                }
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        self.z
                            .set_dictionary(DICTIONARY)
                            .map_err(CompressionError::Inflate)?;
                    }
                    Some(other) => return Err(CompressionError::WrongDictionary(other)),
                    None => return Err(CompressionError::Inflate(e)),
                },
            }
        }
        if out.len() > self.max_block {
            return Err(CompressionError::TooLarge(self.max_block));
        }
        Ok(out)
    }
}

/// Compresses the header blocks we send, in order.
pub struct HeaderDeflater {
    z: Compress,
}

impl std::fmt::Debug for HeaderDeflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDeflater")
            .field("total_in", &self.z.total_in())
            .field("total_out", &self.z.total_out())
            .finish()
    }
}

impl HeaderDeflater {
    /// A fresh compression context primed with the SPDY/3 dictionary.
    pub fn new() -> Result<Self, CompressionError> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(DICTIONARY)
            .map_err(CompressionError::Deflate)?;
        Ok(Self { z })
    }

    /// Compresses one header block and sync-flushes it, appending to `out`.
    pub fn deflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
        let mut consumed = 0usize;
        loop {
            // A sync flush of n bytes never needs more than n + a few bytes per 16 KiB
            // plus the trailer; reserve generously and loop if it still did not fit.
            out.reserve(input.len() - consumed + 64);
            let in_before = self.z.total_in();
            self.z
                .compress_vec(&input[consumed..], out, FlushCompress::Sync)
                .map_err(CompressionError::Deflate)?;
            consumed += usize::try_from(self.z.total_in() - in_before)
                .map_err(|_| CompressionError::Incomplete)?;
            // Done when all input is taken and zlib left spare room (flush complete).
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for &byte in DICTIONARY {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, DICTIONARY_ID);
    }

    #[test]
    fn blocks_round_trip_through_one_continuous_context() {
        let mut d = HeaderDeflater::new().unwrap();
        let mut i = HeaderInflater::new(1 << 20);
        for n in 0..20 {
            let block = format!("streamtype stdout {n} ").repeat(n + 1).into_bytes();
            let mut c = Vec::new();
            d.deflate(&block, &mut c).unwrap();
            assert_eq!(i.inflate(&c).unwrap(), block);
        }
    }

    #[test]
    fn later_blocks_depend_on_earlier_ones() {
        let mut d = HeaderDeflater::new().unwrap();
        let mut first = Vec::new();
        d.deflate(b"streamtype", &mut first).unwrap();
        let mut second = Vec::new();
        d.deflate(b"streamtype", &mut second).unwrap();
        // A fresh context cannot read the second block alone: no zlib header.
        assert!(HeaderInflater::new(1024).inflate(&second).is_err());
    }

    #[test]
    fn oversized_blocks_are_refused() {
        let mut d = HeaderDeflater::new().unwrap();
        let mut c = Vec::new();
        d.deflate(&vec![b'a'; 10_000], &mut c).unwrap();
        let err = HeaderInflater::new(1000).inflate(&c).unwrap_err();
        assert!(matches!(err, CompressionError::TooLarge(1000)), "{err}");
    }

    #[test]
    fn other_dictionaries_are_refused() {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(b"not the spdy dictionary").unwrap();
        let mut c = Vec::with_capacity(256);
        z.compress_vec(b"hello", &mut c, FlushCompress::Sync)
            .unwrap();
        let err = HeaderInflater::new(1024).inflate(&c).unwrap_err();
        assert!(matches!(err, CompressionError::WrongDictionary(_)), "{err}");
    }
}
