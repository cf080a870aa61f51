//! [`Records`]: records stored back to back in one buffer, as a stage's
//! outputs are collected (by the gateway, and by the SDK's native host).

use alloc::vec::Vec;

/// Records stored back to back; clearing keeps the allocation.
#[derive(Debug, Default, Clone)]
pub struct Records {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Records {
    /// Forget every record (keeps the allocation).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total bytes.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Append one record.
    pub fn push(&mut self, rec: &[u8]) {
        self.buf.extend_from_slice(rec);
        self.ends.push(self.buf.len());
    }

    /// Append one record written in place by `write` into at most `max`
    /// bytes; `write` returns the length used. On error nothing is appended.
    pub fn push_with<E>(
        &mut self,
        max: usize,
        write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let start = self.buf.len();
        self.buf.resize(start + max, 0);
        match write(&mut self.buf[start..]) {
            Ok(n) => {
                self.buf.truncate(start + n.min(max));
                self.ends.push(self.buf.len());
                Ok(n)
            }
            Err(e) => {
                self.buf.truncate(start);
                Err(e)
            }
        }
    }

    /// Remove the last record.
    pub fn pop(&mut self) {
        if self.ends.pop().is_some() {
            self.buf.truncate(self.ends.last().copied().unwrap_or(0));
        }
    }

    /// The records, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = core::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(s, e)| &self.buf[s..e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_iterate_pop() {
        let mut r = Records::default();
        r.push(b"ab");
        r.push(b"");
        assert_eq!(
            r.push_with(8, |b| {
                b[..3].copy_from_slice(b"cde");
                Ok::<_, ()>(3)
            }),
            Ok(3)
        );
        assert_eq!(r.push_with(8, |_| Err("no")), Err("no"));
        assert_eq!(r.iter().collect::<Vec<_>>(), [&b"ab"[..], b"", b"cde"]);
        assert_eq!((r.len(), r.bytes()), (3, 5));
        r.pop();
        assert_eq!((r.len(), r.bytes()), (2, 2));
    }
}
