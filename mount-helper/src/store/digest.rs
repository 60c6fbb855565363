//! Content digests: parsing `sha256:<hex>`, and readers that hash what
//! passes through them, so a blob is verified in the same single pass that
//! unpacks it.
//!
//! Invariant: a `Digest` is always `sha256` with exactly 64 lowercase hex
//! digits, so it is safe to use as a file name in the store. Takes no locks.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// A sha256 content digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 hex>`; the error names what is wrong.
    pub fn parse(s: &str) -> Result<Digest, String> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(format!("bad digest '{s}' (expected sha256:<hex>)"));
        };
        if alg != "sha256" {
            return Err(format!(
                "digest '{s}': unsupported algorithm '{alg}' (only sha256)"
            ));
        }
        Digest::from_hex(hex).ok_or_else(|| format!("bad digest '{s}' (expected 64 hex digits)"))
    }

    /// A digest from its 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Digest(hex.to_string()))
    }

    /// The hex part (a file name).
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as docker shows image ids.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }

    /// The digest of a byte string.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(hex(&Sha256::digest(bytes)))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reader that hashes and counts every byte read through it.
#[derive(Debug)]
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Hashing<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads to the end (so trailing bytes count too), then returns the
    /// digest and the number of bytes, and the inner reader.
    pub fn finish(mut self) -> io::Result<(Digest, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest(hex(&self.hasher.finalize())), self.count, self.inner))
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = buf.get(..n) {
            self.hasher.update(b);
        }
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_only_sha256_hex() {
        let d = Digest::parse(&format!("sha256:{EMPTY}"));
        assert_eq!(d.as_ref().map(Digest::hex), Ok(EMPTY));
        assert!(Digest::parse(&format!("sha512:{EMPTY}")).is_err());
        assert!(Digest::parse(EMPTY).is_err());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse(&format!("sha256:{}", EMPTY.to_uppercase())).is_err());
        assert!(Digest::parse(&format!("sha256:{EMPTY}0")).is_err());
    }

    #[test]
    fn hashing_reader_counts_and_hashes_everything() {
        let mut h = Hashing::new(&b"hello world"[..]);
        let mut first = [0u8; 5];
        h.read_exact(&mut first)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(h.count(), 5);
        let (d, n, _) = h.finish().unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(n, 11);
        assert_eq!(d, Digest::of(b"hello world"));
        assert_eq!(
            d.hex(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(Digest::of(b"").hex(), EMPTY);
    }
}
