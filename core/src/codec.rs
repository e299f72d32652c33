//! Bounded binary reading and writing shared by every format in the crate.
//!
//! All integers are big-endian. Every length is checked against the bytes that
//! remain and against a cap before anything is allocated, so a hostile length
//! prefix can neither panic nor make us allocate more than the input holds.

use crate::base::{DecodeError, FORMAT_VERSION};

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(
        &mut self,
        len: usize,
        what: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated { what });
        }
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A `u32` length prefix, then that many bytes; the length is capped at `max`.
    pub(crate) fn bytes_u32(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(DecodeError::TooLarge { what, len, max });
        }
        self.bytes(len, what)
    }

    /// A `u8` length prefix, then that many bytes of UTF-8.
    pub(crate) fn str_u8(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.u8(what)? as usize;
        std::str::from_utf8(self.bytes(len, what)?).map_err(|_| DecodeError::InvalidValue(what))
    }

    /// A `u16` element count capped at `max`, also checked against the bytes
    /// left assuming each element takes at least `min_elem` bytes.
    pub(crate) fn count_u16(
        &mut self,
        max: usize,
        min_elem: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let count = self.u16(what)? as usize;
        self.check_count(count, max, min_elem, what)
    }

    /// A `u32` element count, checked like [`Reader::count_u16`].
    pub(crate) fn count_u32(
        &mut self,
        max: usize,
        min_elem: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let count = self.u32(what)? as usize;
        self.check_count(count, max, min_elem, what)
    }

    fn check_count(
        &self,
        count: usize,
        max: usize,
        min_elem: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        if count > max {
            return Err(DecodeError::TooLarge { what, len: count, max });
        }
        if count.saturating_mul(min_elem) > self.remaining() {
            return Err(DecodeError::Truncated { what });
        }
        Ok(count)
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Writes the big-endian encodings that [`Reader`] reads.
pub(crate) trait Writer {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_bytes_u32(&mut self, v: &[u8]);
    fn put_str_u8(&mut self, v: &str);
}

impl Writer for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_bytes_u32(&mut self, v: &[u8]) {
        self.put_u32(v.len() as u32);
        self.extend_from_slice(v);
    }
    /// Callers cap strings at 255 bytes before writing them.
    fn put_str_u8(&mut self, v: &str) {
        self.put_u8(v.len() as u8);
        self.extend_from_slice(v.as_bytes());
    }
}

/// Checks that a value begins with `magic` and the one format version
/// ([`FORMAT_VERSION`]) of the formats that have only one.
pub(crate) fn check_header(
    r: &mut Reader<'_>,
    magic: &[u8; 4],
    what: &'static str,
) -> Result<(), DecodeError> {
    check_versioned_header(r, magic, what, FORMAT_VERSION).map(|_| ())
}

/// Checks the magic and returns the version, from 1 up to `newest`.
pub(crate) fn check_versioned_header(
    r: &mut Reader<'_>,
    magic: &[u8; 4],
    what: &'static str,
    newest: u8,
) -> Result<u8, DecodeError> {
    if &r.array::<4>(what)? != magic {
        return Err(DecodeError::BadMagic { what });
    }
    match r.u8("version")? {
        v @ 1.. if v <= newest => Ok(v),
        v => Err(DecodeError::UnsupportedVersion(v)),
    }
}
