//! Incremental UTF-8 validation for text messages that arrive in pieces (fragments, and
//! partial reads inside a frame). Owns only a count of bytes already known good; the bytes
//! themselves stay in the caller's message buffer.
//!
//! Fail fast (RFC 6455 §8.1, Autobahn 6.4.*): a byte sequence that can never become valid
//! UTF-8 is reported as soon as its first bad byte arrives, not when the message ends.
//! `std::str::from_utf8` tells the two cases apart: `error_len() == None` means "valid so
//! far, the input just ends inside a character", `Some(_)` means "invalid whatever follows".

/// The text is not UTF-8 (close 1007).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("text is not valid UTF-8")]
pub struct Utf8Invalid;

/// How far into a growing buffer the bytes are known to be valid UTF-8.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Progress {
    /// Bytes from the buffer's start that form complete, valid characters.
    checked: usize,
}

impl Utf8Progress {
    /// Checks the bytes of `buf` past those already checked. `buf` must be the same buffer
    /// as in earlier calls, only grown. Each byte is scanned at most 4 times over the
    /// buffer's life (an incomplete character is re-read when more arrives).
    pub fn advance(&mut self, buf: &[u8]) -> Result<(), Utf8Invalid> {
        debug_assert!(self.checked <= buf.len(), "the buffer only grows");
        match std::str::from_utf8(&buf[self.checked..]) {
            Ok(_) => {
                self.checked = buf.len();
                Ok(())
            }
            Err(err) if err.error_len().is_none() => {
                self.checked += err.valid_up_to();
                debug_assert!(buf.len() - self.checked < 4, "at most 3 pending bytes");
                Ok(())
            }
            Err(_) => Err(Utf8Invalid),
        }
    }

    /// At the message's end: every byte must belong to a complete character.
    pub fn finish(&self, buf: &[u8]) -> Result<(), Utf8Invalid> {
        if self.checked == buf.len() {
            Ok(())
        } else {
            Err(Utf8Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split of a valid text into two pieces validates, and finishes only at the end.
    #[test]
    fn valid_text_in_any_split() {
        let text = "κόσμε €𝄞 ascii".as_bytes();
        for cut in 0..=text.len() {
            let mut progress = Utf8Progress::default();
            progress.advance(&text[..cut]).unwrap();
            progress.advance(text).unwrap();
            progress.finish(text).unwrap();
        }
    }

    /// A bad byte fails at once, before the message ends; a truncated character fails only
    /// at the end.
    #[test]
    fn fails_fast_on_impossible_prefix() {
        let mut progress = Utf8Progress::default();
        // 0xF4 0x90 is above U+10FFFF: no continuation can make it valid.
        assert_eq!(progress.advance(b"ab\xf4\x90"), Err(Utf8Invalid));
        let mut progress = Utf8Progress::default();
        // A surrogate (U+D800) as 0xED 0xA0: invalid at the second byte.
        assert_eq!(progress.advance(b"\xed\xa0"), Err(Utf8Invalid));
        let mut progress = Utf8Progress::default();
        progress.advance(b"a\xe2\x82").unwrap();
        assert_eq!(progress.finish(b"a\xe2\x82"), Err(Utf8Invalid));
    }
}
