//! Transparent decompression of archives and layers, detected by magic number.
//!
//! Supported: gzip (single or multi-member), zstd (single frame), xz, and uncompressed data.
//! Detection never trusts file names or media types, only the first bytes.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// A compression format recognised by its magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// No compression recognised: the data is taken as-is.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
}

impl Compression {
    /// Recognises the compression of data starting with `head`.
    pub(crate) fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else {
            Compression::None
        }
    }
}

/// Wraps `reader` in the decompressor its first bytes call for.
pub(crate) fn decompressed<R: Read + Send + 'static>(reader: R) -> io::Result<(Compression, Box<dyn Read + Send>)> {
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    let kind = Compression::detect(buffered.fill_buf()?);
    let out: Box<dyn Read + Send> = match kind {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            let dec = ruzstd::decoding::StreamingDecoder::new(buffered)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad zstd data: {e}")))?;
            Box::new(ZstdReader(dec))
        }
        Compression::Xz => Box::new(xz_reader(buffered)),
    };
    Ok((kind, out))
}

struct ZstdReader<R: Read>(ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>);

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// lzma-rs only decompresses from a reader into a writer, so a thread runs it and hands
/// chunks over a bounded channel. Dropping the returned reader stops the thread at its next
/// write.
fn xz_reader<R: BufRead + Send + 'static>(mut input: R) -> ChannelReader {
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        let mut writer = io::BufWriter::with_capacity(256 * 1024, ChannelWriter(tx.clone()));
        let result = lzma_rs::xz_decompress(&mut input, &mut writer)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad xz data: {e}")))
            .and_then(|()| writer.flush());
        drop(writer);
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
    });
    ChannelReader { rx, buf: Vec::new(), pos: 0 }
}

struct ChannelWriter(SyncSender<io::Result<Vec<u8>>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.0.send(Ok(buf.to_vec())).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "reader went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_magics() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(Compression::detect(b"\xfd7zXZ\x00rest"), Compression::Xz);
        assert_eq!(Compression::detect(b"ustar"), Compression::None);
        assert_eq!(Compression::detect(b""), Compression::None);
    }

    #[test]
    fn gzip_and_xz_roundtrip() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let (kind, mut r) = decompressed(io::Cursor::new(gz)).unwrap();
        assert_eq!(kind, Compression::Gzip);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);

        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut io::Cursor::new(&data), &mut xz).unwrap();
        let (kind, mut r) = decompressed(io::Cursor::new(xz.clone())).unwrap();
        assert_eq!(kind, Compression::Xz);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);

        // Truncated xz must be an error, not a short read.
        xz.truncate(xz.len() / 2);
        let (_, mut r) = decompressed(io::Cursor::new(xz)).unwrap();
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
    }
}
