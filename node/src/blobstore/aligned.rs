//! A byte buffer whose start is aligned for direct I/O (`O_DIRECT` needs the memory, the file
//! offset and the length of every write aligned to the logical block size; 4096 covers every
//! common device, and a device that needs more refuses the write, which then goes through the
//! page cache).
//!
//! Safe code only: the buffer over-allocates by one alignment unit and uses the aligned window
//! inside. The backing `Vec` is never resized after allocation, so the window cannot move.

/// Alignment of the buffer's start and of its capacity.
pub(super) const ALIGN: usize = 4096;

/// A growable buffer of bytes starting at an `ALIGN`-aligned address.
#[derive(Default)]
pub(super) struct AlignedBuf {
    /// `capacity + ALIGN` bytes (or none): the aligned window is `raw[start..start + capacity]`.
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl AlignedBuf {
    /// An empty buffer that can hold at least `capacity` bytes without reallocating.
    pub(super) fn with_capacity(capacity: usize) -> AlignedBuf {
        let mut buf = AlignedBuf::default();
        buf.reserve_total(capacity);
        buf
    }

    /// Bytes the buffer holds before it must reallocate (a multiple of `ALIGN`).
    pub(super) fn capacity(&self) -> usize {
        self.raw.len().saturating_sub(ALIGN)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The bytes held.
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// Makes room for `total` bytes in all (rounded up to `ALIGN`), keeping the contents.
    pub(super) fn reserve_total(&mut self, total: usize) {
        if total <= self.capacity() {
            return;
        }
        let capacity = total.next_multiple_of(ALIGN);
        let raw = vec![0u8; capacity + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        let mut grown = AlignedBuf { raw, start, len: 0 };
        grown.extend_from_slice(self.as_slice());
        *self = grown;
    }

    /// Appends `data`, growing to exactly the needed size (rounded up to `ALIGN`) if it does
    /// not fit: each growth allocates and copies, so callers that append in small pieces
    /// reserve ahead, geometrically.
    pub(super) fn extend_from_slice(&mut self, data: &[u8]) {
        self.reserve_total(self.len + data.len());
        let at = self.start + self.len;
        self.raw[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    pub(super) fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(b: &[u8]) -> bool {
        (b.as_ptr() as usize).is_multiple_of(ALIGN)
    }

    #[test]
    fn grows_keeps_contents_and_stays_aligned() {
        let mut b = AlignedBuf::default();
        assert_eq!((b.len(), b.capacity()), (0, 0));
        b.extend_from_slice(b"abc");
        assert_eq!(b.as_slice(), b"abc");
        assert_eq!(b.capacity(), ALIGN);
        assert!(aligned(b.as_slice()));
        let big = vec![7u8; 3 * ALIGN + 5];
        b.extend_from_slice(&big);
        assert_eq!(b.len(), 3 + big.len());
        assert_eq!(&b.as_slice()[..3], b"abc");
        assert_eq!(&b.as_slice()[3..], &big[..]);
        assert!(aligned(b.as_slice()));
        assert_eq!(b.capacity() % ALIGN, 0);
        b.clear();
        assert_eq!(b.len(), 0);
        assert!(b.capacity() >= 3 * ALIGN + 8);
        assert_eq!(
            format!("{b:?}"),
            format!("AlignedBuf {{ len: 0, capacity: {} }}", b.capacity())
        );
    }
}
