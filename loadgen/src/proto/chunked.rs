//! Incremental, in-place decoder for HTTP/1.1 `Transfer-Encoding: chunked` bodies.
//! nchan sends its SSE stream chunked, so this sits on the hot read path: it moves chunk
//! payloads over the chunk headers inside the read buffer in one pass, without copying
//! anything elsewhere and without keeping raw bytes between reads.

/// Longest chunk-size line (hex digits) accepted: 16 hex digits fill a u64.
const SIZE_DIGITS_MAX: u8 = 16;

/// Why a chunked body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkedError {
    /// A chunk-size line had an unexpected byte.
    #[error("bad chunk size line (byte 0x{0:02x})")]
    Size(u8),
    /// The chunk size does not fit in 64 bits.
    #[error("chunk size too large")]
    Overflow,
    /// A chunk's data was not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    FinalLf,
    Done,
}

/// Result of one [`ChunkedDecoder::decode_in_place`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of body data now at the start of the buffer.
    pub data_len: usize,
    /// Raw bytes consumed (less than the buffer only when the body ended).
    pub consumed: usize,
}

/// Streaming chunked decoder; state survives between reads.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    remaining: u64,
    digits: u8,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            remaining: 0,
            digits: 0,
        }
    }

    /// True once the last chunk and trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `buffer` in place: the body data ends up in `buffer[..data_len]`.
    pub fn decode_in_place(&mut self, buffer: &mut [u8]) -> Result<Decoded, ChunkedError> {
        let mut read = 0;
        let mut write = 0;
        while read < buffer.len() && self.state != State::Done {
            if self.state == State::Data {
                let available = buffer.len() - read;
                let take = usize::try_from(self.remaining).map_or(available, |r| r.min(available));
                buffer.copy_within(read..read + take, write);
                read += take;
                write += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let byte = buffer[read];
            read += 1;
            self.state = match self.state {
                State::Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let nibble = (byte as char).to_digit(16).unwrap_or(0);
                        self.digits += 1;
                        if self.digits > SIZE_DIGITS_MAX {
                            return Err(ChunkedError::Overflow);
                        }
                        self.remaining = (self.remaining << 4) | u64::from(nibble);
                        State::Size
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => State::Extension,
                    b'\r' if self.digits > 0 => State::SizeLf,
                    b'\n' if self.digits > 0 => self.size_line_done(),
                    other => return Err(ChunkedError::Size(other)),
                },
                State::Extension => match byte {
                    b'\r' => State::SizeLf,
                    b'\n' => self.size_line_done(),
                    _ => State::Extension,
                },
                State::SizeLf => match byte {
                    b'\n' => self.size_line_done(),
                    other => return Err(ChunkedError::Size(other)),
                },
                State::DataCr => match byte {
                    b'\r' => State::DataLf,
                    b'\n' => State::Size,
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::DataLf => match byte {
                    b'\n' => State::Size,
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::TrailerStart => match byte {
                    b'\r' => State::FinalLf,
                    b'\n' => State::Done,
                    _ => State::Trailer,
                },
                State::Trailer => match byte {
                    b'\n' => State::TrailerStart,
                    _ => State::Trailer,
                },
                State::FinalLf => match byte {
                    b'\n' => State::Done,
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::Data | State::Done => unreachable!("handled above / loop condition"),
            };
        }
        Ok(Decoded {
            data_len: write,
            consumed: read,
        })
    }

    fn size_line_done(&mut self) -> State {
        self.digits = 0;
        if self.remaining == 0 {
            State::TrailerStart
        } else {
            State::Data
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"5\r\nhello\r\n1;ext=1\r\n \r\nB\r\nworld-again\r\n0\r\nX-T: 1\r\n\r\nNEXT";

    #[test]
    fn decodes_whole() {
        let mut buffer = BODY.to_vec();
        let mut decoder = ChunkedDecoder::new();
        let decoded = decoder.decode_in_place(&mut buffer).unwrap();
        assert_eq!(&buffer[..decoded.data_len], b"hello world-again");
        assert_eq!(&BODY[decoded.consumed..], b"NEXT");
        assert!(decoder.is_done());
    }

    #[test]
    fn decodes_across_every_split() {
        let body = &BODY[..BODY.len() - b"NEXT".len()];
        for split in 0..=body.len() {
            let mut decoder = ChunkedDecoder::new();
            let mut first = body[..split].to_vec();
            let one = decoder.decode_in_place(&mut first).unwrap();
            assert_eq!(one.consumed, split);
            let mut data = first[..one.data_len].to_vec();
            let mut second = body[split..].to_vec();
            let two = decoder.decode_in_place(&mut second).unwrap();
            data.extend_from_slice(&second[..two.data_len]);
            assert_eq!(data, b"hello world-again", "split {split}");
            assert!(decoder.is_done());
        }
    }

    #[test]
    fn rejects_garbage() {
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.decode_in_place(&mut b"zz\r\n".to_vec()),
            Err(ChunkedError::Size(b'z'))
        );
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.decode_in_place(&mut b"2\r\nabX".to_vec()),
            Err(ChunkedError::MissingCrlf)
        );
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.decode_in_place(&mut b"11111111111111111\r\n".to_vec()),
            Err(ChunkedError::Overflow)
        );
    }
}
