//! Sentences over a byte stream: a buffered reader and writer around [`Decoder`].
//!
//! [`Connection`] reads and writes whole sentences on any `AsyncRead + AsyncWrite` stream
//! (TCP, TLS, an in-memory duplex), mini-redis style: bytes accumulate in a buffer until
//! the decoder finds a whole sentence. [`Connection::into_split`] gives a
//! [`SentenceReader`] and a [`SentenceWriter`] for a reader task and a writer task.

use bytes::BytesMut;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf,
};

use crate::codec::{DecodeError, Decoder, Sentence, encode_sentence};
use crate::error::Error;
use crate::message::Command;

const READ_CHUNK: usize = 8 * 1024;

/// Reads sentences from a byte stream.
#[derive(Debug)]
pub struct SentenceReader<R> {
    stream: R,
    buffer: BytesMut,
    decoder: Decoder,
}

impl<R: AsyncRead + Unpin> SentenceReader<R> {
    pub fn new(stream: R) -> Self {
        Self::with_decoder(stream, Decoder::default())
    }

    pub fn with_decoder(stream: R, decoder: Decoder) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            decoder,
        }
    }

    /// The next sentence; `Ok(None)` when the stream ends cleanly between sentences, an
    /// error when it ends inside one or the bytes are not a sentence.
    pub async fn read_sentence(&mut self) -> Result<Option<Sentence>, Error> {
        loop {
            if let Some(sentence) = self.decoder.decode(&mut self.buffer)? {
                return Ok(Some(sentence));
            }
            self.buffer.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return match self.decoder.decode_eof(&mut self.buffer)? {
                    Some(sentence) => Ok(Some(sentence)),
                    None if self.buffer.is_empty() => Ok(None),
                    None => Err(DecodeError::Truncated(self.buffer.len()).into()),
                };
            }
        }
    }
}

/// Writes sentences to a byte stream through a buffer; call [`flush`](Self::flush) to
/// send what was written.
#[derive(Debug)]
pub struct SentenceWriter<W: AsyncWrite> {
    stream: BufWriter<W>,
    scratch: BytesMut,
}

impl<W: AsyncWrite + Unpin> SentenceWriter<W> {
    pub fn new(stream: W) -> Self {
        Self {
            stream: BufWriter::new(stream),
            scratch: BytesMut::new(),
        }
    }

    /// Buffers one sentence.
    pub async fn write_sentence(&mut self, sentence: &Sentence) -> Result<(), Error> {
        self.scratch.clear();
        sentence.encode(&mut self.scratch)?;
        self.stream.write_all(&self.scratch).await?;
        Ok(())
    }

    /// Buffers one command.
    pub async fn write_command(&mut self, command: &Command) -> Result<(), Error> {
        self.scratch.clear();
        encode_sentence(command.words(), &mut self.scratch)?;
        self.stream.write_all(&self.scratch).await?;
        Ok(())
    }

    /// Buffers bytes that already hold whole encoded sentences.
    pub async fn write_encoded(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Sends everything buffered.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.stream.flush().await?;
        Ok(())
    }

    /// Flushes and shuts the stream down for writing.
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        self.stream.shutdown().await?;
        Ok(())
    }
}

/// Both directions of one stream.
#[derive(Debug)]
pub struct Connection<S: AsyncRead + AsyncWrite> {
    stream: BufWriter<S>,
    buffer: BytesMut,
    decoder: Decoder,
    scratch: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Self::with_decoder(stream, Decoder::default())
    }

    pub fn with_decoder(stream: S, decoder: Decoder) -> Self {
        Self {
            stream: BufWriter::new(stream),
            buffer: BytesMut::with_capacity(READ_CHUNK),
            decoder,
            scratch: BytesMut::new(),
        }
    }

    /// The next sentence; `Ok(None)` at a clean end of stream (see
    /// [`SentenceReader::read_sentence`]).
    pub async fn read_sentence(&mut self) -> Result<Option<Sentence>, Error> {
        loop {
            if let Some(sentence) = self.decoder.decode(&mut self.buffer)? {
                return Ok(Some(sentence));
            }
            self.buffer.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return match self.decoder.decode_eof(&mut self.buffer)? {
                    Some(sentence) => Ok(Some(sentence)),
                    None if self.buffer.is_empty() => Ok(None),
                    None => Err(DecodeError::Truncated(self.buffer.len()).into()),
                };
            }
        }
    }

    /// Writes one sentence and flushes it.
    pub async fn write_sentence(&mut self, sentence: &Sentence) -> Result<(), Error> {
        self.scratch.clear();
        sentence.encode(&mut self.scratch)?;
        self.stream.write_all(&self.scratch).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes one command and flushes it.
    pub async fn write_command(&mut self, command: &Command) -> Result<(), Error> {
        self.scratch.clear();
        command.encode(&mut self.scratch)?;
        self.stream.write_all(&self.scratch).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Flushes and shuts the stream down for writing.
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        self.stream.shutdown().await?;
        Ok(())
    }

    /// The stream underneath (bytes already read but not yet decoded are lost).
    pub fn get_ref(&self) -> &S {
        self.stream.get_ref()
    }

    /// The stream underneath, to write raw bytes (tests of a misbehaving peer, for one).
    pub fn get_mut(&mut self) -> &mut S {
        self.stream.get_mut()
    }

    /// Splits into a reader and a writer that can live in different tasks. Bytes read but
    /// not yet decoded go with the reader; call after a write has been flushed.
    pub fn into_split(self) -> (SentenceReader<ReadHalf<S>>, SentenceWriter<WriteHalf<S>>) {
        let (r, w) = tokio::io::split(self.stream.into_inner());
        let reader = SentenceReader {
            stream: r,
            buffer: self.buffer,
            decoder: self.decoder,
        };
        (reader, SentenceWriter::new(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn sentence(words: &[&str]) -> Sentence {
        Sentence::new(
            words
                .iter()
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect(),
        )
    }

    #[tokio::test]
    async fn sentences_cross_a_duplex_stream() {
        let (a, b) = tokio::io::duplex(64);
        let mut left = Connection::new(a);
        let mut right = Connection::new(b);
        let s = sentence(&["/login", "=name=admin", "=password=x"]);
        left.write_sentence(&s).await.unwrap();
        assert_eq!(right.read_sentence().await.unwrap(), Some(s));
        // Longer than the pipe's buffer: the reader must gather it over several reads.
        let long = "=comment=".to_string() + &"x".repeat(1000);
        let s2 = sentence(&["!re", &long]);
        let (written, read) = tokio::join!(right.write_sentence(&s2), left.read_sentence());
        written.unwrap();
        assert_eq!(read.unwrap(), Some(s2));
    }

    #[tokio::test]
    async fn clean_end_of_stream_is_none() {
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        let mut c = Connection::new(b);
        assert!(c.read_sentence().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn end_of_stream_inside_a_sentence_is_an_error() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0x05, b'!', b'd']).await.unwrap();
        drop(a);
        let mut c = Connection::new(b);
        assert!(matches!(
            c.read_sentence().await,
            Err(Error::Decode(DecodeError::Truncated(3)))
        ));
    }

    #[tokio::test]
    async fn control_byte_is_an_error() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0x03, b'!', b'r', b'e', 0xF8]).await.unwrap();
        let mut c = Connection::new(b);
        assert!(matches!(
            c.read_sentence().await,
            Err(Error::Decode(DecodeError::ControlByte(0xF8)))
        ));
    }

    #[tokio::test]
    async fn split_keeps_buffered_bytes() {
        let (a, b) = tokio::io::duplex(256);
        let mut left = Connection::new(a);
        let mut right = Connection::new(b);
        // Two sentences in one write: the first read buffers both.
        let mut buf = BytesMut::new();
        sentence(&["!re", "=a=1"]).encode(&mut buf).unwrap();
        sentence(&["!done"]).encode(&mut buf).unwrap();
        left.stream.write_all(&buf).await.unwrap();
        left.stream.flush().await.unwrap();
        assert_eq!(
            right.read_sentence().await.unwrap(),
            Some(sentence(&["!re", "=a=1"]))
        );
        let (mut reader, mut writer) = right.into_split();
        assert_eq!(
            reader.read_sentence().await.unwrap(),
            Some(sentence(&["!done"]))
        );
        writer.write_command(&Command::new("/quit")).await.unwrap();
        writer.flush().await.unwrap();
        assert_eq!(
            left.read_sentence().await.unwrap(),
            Some(sentence(&["/quit"]))
        );
    }
}
