//! The two ends between blocking producers and consumers and the async network: [`ChunkWriter`]
//! (a [`Write`] that sends fixed-size chunks to a [`ChunkSink`]) and [`ChannelReader`] (a
//! [`Read`] over chunks), both on bounded `tokio::sync::mpsc` channels, so memory is a number
//! and a slow network slows the producer instead of filling the heap. The storage code writes
//! plain chunks ([`ChannelWriter`]); the transfer service's `FrameWriter` is the same writer
//! over a sink that frames each chunk (its SHA-256) for the network.
//!
//! Both call `blocking_send` / `blocking_recv`: use them from `spawn_blocking` threads (where
//! `pack` and `unpack` run), never inside an async task — those calls panic there.

use std::io::{self, Read, Write};

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc;

/// Size of one chunk (the last one of a stream may be shorter): the network framing's, so a
/// chunk of the tar stream is a frame.
pub use hostshift_shared::framing::CHUNK_SIZE;
/// Suggested capacity of the chunk channel between a [`ChannelWriter`] and the network (or a
/// `ChannelReader` and the network). Worst-case memory of one stream on one side:
/// `(QUEUE_DEPTH + 2) × CHUNK_SIZE` = 6 MiB — the queued chunks, the one being filled and the one
/// being consumed — plus [`READ_BUFFER`](super::walk::READ_BUFFER) inside `pack` or `unpack`.
pub const QUEUE_DEPTH: usize = 4;

/// Where a [`ChunkWriter`] sends each full chunk.
pub trait ChunkSink {
    /// Sends one chunk, blocking while the receiver is behind (backpressure).
    ///
    /// # Errors
    /// `BrokenPipe` once the receiver is gone.
    fn send_chunk(&mut self, chunk: Bytes) -> io::Result<()>;
    /// True once the receiver is gone.
    fn is_closed(&self) -> bool;
}

impl ChunkSink for mpsc::Sender<Bytes> {
    fn send_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.blocking_send(chunk).map_err(|_| gone())
    }

    fn is_closed(&self) -> bool {
        mpsc::Sender::is_closed(self)
    }
}

/// A [`Write`] whose buffer a producer may also fill directly: [`pack`](super::pack::pack) reads
/// a file's content straight into the chunk being built ([`ChunkWriter`]) instead of into a
/// buffer of its own and copying it over — one copy less of every byte sent (~0.4 CPU-seconds
/// of the sending agent for the benchmark's 3 GB). Writers without such a buffer (a `Vec`, a
/// gzip encoder) keep the defaults and are written to as usual.
pub trait FillWrite: Write {
    /// Free room of the buffer being filled, zeroed, at least one and at most `max` bytes long
    /// (when `max > 0`); `None` when this writer has no buffer to lend: write to it instead.
    ///
    /// # Errors
    /// The writer's (a [`ChunkWriter`] whose receiver is gone: `BrokenPipe`).
    fn room(&mut self, max: usize) -> io::Result<Option<&mut [u8]>> {
        let _ = max;
        Ok(None)
    }

    /// Counts the first `n` bytes of the last [`FillWrite::room`] as written; the rest of that
    /// room is given back.
    ///
    /// # Errors
    /// The writer's.
    fn filled(&mut self, n: usize) -> io::Result<()> {
        let _ = n;
        Ok(())
    }
}

impl FillWrite for Vec<u8> {}

impl<W: Write> FillWrite for flate2::write::GzEncoder<W> {}

impl<W: FillWrite + ?Sized> FillWrite for &mut W {
    fn room(&mut self, max: usize) -> io::Result<Option<&mut [u8]>> {
        (**self).room(max)
    }

    fn filled(&mut self, n: usize) -> io::Result<()> {
        (**self).filled(n)
    }
}

/// A [`Write`] that cuts what it is given into [`CHUNK_SIZE`] chunks and hands each to its
/// sink: when the network is slow the sink blocks and so does the writer (backpressure). Call
/// `flush` at the end to send the last, shorter chunk ([`pack`](super::pack::pack) does). A
/// producer may also read into the chunk itself ([`FillWrite`]).
///
/// Must be used from a blocking thread (`spawn_blocking`), never inside an async task: the
/// sinks call `blocking_send`, which panics there.
pub struct ChunkWriter<S> {
    sink: S,
    buf: BytesMut,
    /// Where the room lent by [`FillWrite::room`] starts (the chunk's length then), until
    /// [`FillWrite::filled`] says how much of it was used.
    lent_at: Option<usize>,
}

/// A [`ChunkWriter`] sending plain chunks on a bounded channel.
pub type ChannelWriter = ChunkWriter<mpsc::Sender<Bytes>>;

impl ChannelWriter {
    /// A writer sending into `tx` (a channel of capacity [`QUEUE_DEPTH`] is a good default).
    pub fn new(tx: mpsc::Sender<Bytes>) -> Self {
        Self::with_sink(tx)
    }
}

impl<S: ChunkSink> ChunkWriter<S> {
    /// A writer handing its chunks to `sink`.
    pub fn with_sink(sink: S) -> Self {
        Self {
            sink,
            buf: BytesMut::new(),
            lent_at: None,
        }
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The sink, to tell it something about the stream's end (a seal).
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Sends what is buffered and returns the sink (to end the stream its own way).
    ///
    /// # Errors
    /// `BrokenPipe` once the receiver is gone.
    pub fn into_sink(mut self) -> io::Result<S> {
        self.flush()?;
        Ok(self.sink)
    }

    /// Drops room lent and never filled (a producer that failed between `room` and `filled`):
    /// only bytes counted as written are ever sent.
    fn give_back(&mut self) {
        if let Some(at) = self.lent_at.take() {
            self.buf.truncate(at);
        }
    }

    fn send(&mut self) -> io::Result<()> {
        self.give_back();
        // A fresh buffer for the next chunk, so a sent chunk never shares its allocation.
        let chunk = std::mem::take(&mut self.buf).freeze();
        self.sink.send_chunk(chunk)
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the receiver of the stream is gone",
    )
}

impl<S: ChunkSink> Write for ChunkWriter<S> {
    /// # Errors
    /// `BrokenPipe` once the receiver is gone, so the producer stops.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.sink.is_closed() {
            return Err(gone());
        }
        self.give_back();
        if self.buf.capacity() == 0 {
            self.buf.reserve(CHUNK_SIZE);
        }
        let n = data.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    /// Sends the chunk being filled, if any (shorter than [`CHUNK_SIZE`]).
    ///
    /// # Errors
    /// `BrokenPipe` once the receiver is gone.
    fn flush(&mut self) -> io::Result<()> {
        self.give_back();
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

impl<S: ChunkSink> FillWrite for ChunkWriter<S> {
    /// The chunk's free room, at most `max` bytes, zeroed (safe code cannot lend uninitialized
    /// memory; zeroing costs less than the copy it replaces).
    fn room(&mut self, max: usize) -> io::Result<Option<&mut [u8]>> {
        if self.sink.is_closed() {
            return Err(gone());
        }
        self.give_back();
        if self.buf.capacity() == 0 {
            self.buf.reserve(CHUNK_SIZE);
        }
        let at = self.buf.len();
        let n = max.min(CHUNK_SIZE - at);
        self.buf.resize(at + n, 0);
        self.lent_at = Some(at);
        Ok(Some(&mut self.buf[at..]))
    }

    /// Keeps `n` bytes of the room lent last and sends the chunk once it is full.
    fn filled(&mut self, n: usize) -> io::Result<()> {
        let Some(at) = self.lent_at.take() else {
            return Err(io::Error::other("bytes filled without room lent"));
        };
        let end = at + n;
        if end > self.buf.len() {
            let lent = self.buf.len() - at;
            self.buf.truncate(at);
            return Err(io::Error::other(format!(
                "{n} bytes filled, more than the room lent ({lent} bytes)"
            )));
        }
        self.buf.truncate(end);
        if self.buf.len() == CHUNK_SIZE {
            self.send()?;
        }
        Ok(())
    }
}

/// A [`Read`] over chunks arriving on a bounded channel, one chunk held at a time. The stream ends
/// when the sender is dropped. Must be used from a blocking thread (`spawn_blocking`):
/// `blocking_recv` panics inside an async task.
pub struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl ChannelReader {
    /// A reader over `rx`.
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.cur = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_writer_sends_full_chunks_then_the_rest_on_flush() {
        let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
        let producer = std::thread::spawn(move || {
            let mut w = ChannelWriter::new(tx);
            w.write_all(&vec![1u8; CHUNK_SIZE * 2 + 10]).unwrap();
            w.flush().unwrap();
        });
        let mut sizes = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            sizes.push(chunk.len());
        }
        producer.join().unwrap();
        assert_eq!(sizes, [CHUNK_SIZE, CHUNK_SIZE, 10]);
    }

    #[test]
    fn channel_writer_fails_with_broken_pipe_once_the_receiver_is_gone() {
        let (tx, rx) = mpsc::channel(1);
        let mut w = ChannelWriter::new(tx);
        w.write_all(b"queued").unwrap();
        drop(rx);
        let err = w.write_all(&vec![0u8; CHUNK_SIZE]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let (tx, rx) = mpsc::channel(1);
        let mut w = ChannelWriter::new(tx);
        w.write_all(b"pending").unwrap();
        drop(rx);
        assert_eq!(w.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn bytes_filled_into_the_lent_room_go_out_in_order_with_what_is_written() {
        let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
        let producer = std::thread::spawn(move || -> io::Result<()> {
            let mut w = ChannelWriter::new(tx);
            w.write_all(b"head")?;
            let mut value = 0u8;
            let mut filled = 0;
            while filled < CHUNK_SIZE + 100 {
                let room = w.room(300_000)?.expect("a chunk writer lends its buffer");
                assert!(!room.is_empty() && room.len() <= 300_000);
                assert!(room.iter().all(|b| *b == 0), "lent room is zeroed");
                // Fill all but the last byte: the rest of the room is given back.
                let n = room.len().max(2) - 1;
                for b in &mut room[..n] {
                    *b = value;
                    value = value.wrapping_add(1);
                }
                w.filled(n)?;
                filled += n;
            }
            w.write_all(b"tail")?;
            w.flush()
        });
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            sizes.push(chunk.len());
            got.extend_from_slice(&chunk);
        }
        producer
            .join()
            .expect("the producer thread")
            .expect("the writes");
        assert_eq!(sizes[0], CHUNK_SIZE, "full chunks go out as they fill");
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[got.len() - 4..], b"tail");
        let body = &got[4..got.len() - 4];
        assert!(body.len() >= CHUNK_SIZE + 100);
        let mut value = 0u8;
        for (i, b) in body.iter().enumerate() {
            assert_eq!(*b, value, "byte {i} of the filled content");
            value = value.wrapping_add(1);
        }
    }

    #[test]
    fn filling_more_than_the_room_lent_is_refused_and_a_gone_receiver_lends_nothing() {
        fn rx_chunks(rx: &mut mpsc::Receiver<Bytes>) -> Vec<u8> {
            let mut got = Vec::new();
            while let Ok(chunk) = rx.try_recv() {
                got.extend_from_slice(&chunk);
            }
            got
        }
        let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
        let mut w = ChannelWriter::new(tx);
        let room = w.room(10).expect("room").expect("lent").len();
        assert_eq!(room, 10);
        assert!(w.filled(11).is_err(), "11 bytes filled into a room of 10");
        assert!(w.filled(1).is_err(), "filled without room lent");
        // Room lent and never filled is not sent.
        w.room(5).expect("room").expect("lent")[..5].copy_from_slice(b"XXXXX");
        w.write_all(b"kept").expect("write");
        w.flush().expect("flush");
        assert_eq!(&rx_chunks(&mut rx)[..], b"kept");
        drop(rx);
        assert_eq!(
            w.room(10).expect_err("the receiver is gone").kind(),
            io::ErrorKind::BrokenPipe
        );
        let mut plain: Vec<u8> = Vec::new();
        assert!(
            plain.room(10).expect("no error").is_none(),
            "a Vec lends nothing"
        );
    }

    #[test]
    fn channel_reader_reads_across_chunks_and_ends_when_the_sender_is_dropped() {
        let (tx, rx) = mpsc::channel(4);
        for part in [&b"hel"[..], b"", b"lo ", b"world"] {
            tx.try_send(Bytes::copy_from_slice(part)).unwrap();
        }
        drop(tx);
        let mut s = String::new();
        ChannelReader::new(rx).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
    }
}
