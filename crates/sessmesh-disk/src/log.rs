//! An append-only log of checksummed records.
//!
//! Each record is its length (4 bytes, little-endian), the CRC-32 of its
//! payload (4 bytes), then the payload. A crash can leave a torn record at
//! the end; a disk can corrupt one anywhere. Reading stops at the first
//! record that is short or whose checksum fails, and says where: the caller
//! truncates the file there (as Redis's `aof-load-truncated` does) and
//! warns, naming the file and the offset.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The bytes before each payload: its length and its checksum.
pub const HEADER: usize = 8;

/// The largest payload a record may carry (a session is at most a few
/// hundred kilobytes; this bounds what a corrupt length can make a reader
/// allocate).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Where reading a log stopped before its end, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The offset of the first record that could not be read: the file is
    /// good up to there.
    pub offset: u64,
    /// What was wrong with it.
    pub reason: &'static str,
}

/// What [`read`] found in a log.
#[derive(Debug, Default)]
pub struct Contents {
    /// The payloads of the good records, in order.
    pub records: Vec<Vec<u8>>,
    /// The end of the good records.
    pub good_len: u64,
    /// Set when the file goes on past them.
    pub damage: Option<Damage>,
}

/// Reads every good record of the log at `path`, stopping at the first one
/// that is torn or corrupt.
///
/// # Errors
/// When the file cannot be opened or read (a missing file reads as empty).
pub fn read(path: &Path) -> io::Result<Contents> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Contents::default()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut contents = Contents::default();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER];
    while offset < len {
        let damage = |reason| Some(Damage { offset, reason });
        if len - offset < HEADER as u64 {
            contents.damage = damage("a record's header is cut short");
            break;
        }
        reader.read_exact(&mut header)?;
        let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if size > MAX_PAYLOAD {
            contents.damage = damage("a record's length is past the largest a record may have");
            break;
        }
        if len - offset - (HEADER as u64) < size as u64 {
            contents.damage = damage("a record is cut short");
            break;
        }
        let mut payload = vec![0u8; size];
        reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            contents.damage = damage("a record's checksum does not match its bytes");
            break;
        }
        contents.records.push(payload);
        offset += (HEADER + size) as u64;
    }
    contents.good_len = offset;
    Ok(contents)
}

/// A log open for appending.
pub struct Log {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl Log {
    /// Opens the log at `path` for appending after its first `good_len`
    /// bytes (what [`read`] found good), cutting off whatever follows them.
    ///
    /// # Errors
    /// When the file cannot be opened, cut or written.
    pub fn open(path: &Path, good_len: u64) -> io::Result<Log> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
            file.sync_data()?;
        }
        file.seek(SeekFrom::Start(good_len))?;
        Ok(Log {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 20, file),
            len: good_len,
        })
    }

    /// Appends a record carrying `payload` (to the buffer: see
    /// [`flush`](Self::flush) and [`sync`](Self::sync)).
    ///
    /// # Errors
    /// When the payload is larger than [`MAX_PAYLOAD`], or writing fails.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.len() > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a record of {} bytes is larger than the largest a log takes ({MAX_PAYLOAD})",
                    payload.len()
                ),
            ));
        }
        let size = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.out.write_all(&size.to_le_bytes())?;
        self.out
            .write_all(&crc32fast::hash(payload).to_le_bytes())?;
        self.out.write_all(payload)?;
        self.len += (HEADER + payload.len()) as u64;
        Ok(())
    }

    /// Hands what is buffered to the operating system: it survives the
    /// process, not the machine.
    ///
    /// # Errors
    /// When writing fails (a full disk, say).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes, then waits until the disk has it: it survives the machine.
    ///
    /// # Errors
    /// When writing or syncing fails.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    /// The log's length, bytes, buffered records included.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(path: &Path, records: &[&[u8]]) {
        let mut log = Log::open(path, 0).unwrap();
        for record in records {
            log.append(record).unwrap();
        }
        log.sync().unwrap();
    }

    #[test]
    fn records_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        written(&path, &[b"one", b"", b"three"]);
        let contents = read(&path).unwrap();
        assert_eq!(
            contents.records,
            [b"one".to_vec(), vec![], b"three".to_vec()]
        );
        assert_eq!(contents.damage, None);
        assert_eq!(contents.good_len, std::fs::metadata(&path).unwrap().len());
        assert!(
            read(&dir.path().join("missing"))
                .unwrap()
                .records
                .is_empty()
        );
    }

    #[test]
    fn a_torn_tail_is_found_cut_off_and_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        written(&path, &[b"first", b"second"]);
        let whole = std::fs::metadata(&path).unwrap().len();
        let first_end = (HEADER + 5) as u64;
        // Every cut inside the second record loses it and only it.
        for cut in first_end + 1..whole {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(cut).unwrap();
            let contents = read(&path).unwrap();
            assert_eq!(contents.records, [b"first".to_vec()], "cut at {cut}");
            let damage = contents.damage.expect("the cut is found");
            assert_eq!(damage.offset, first_end, "cut at {cut}");
            // Appending after the good records replaces the torn one.
            let mut log = Log::open(&path, contents.good_len).unwrap();
            log.append(b"second").unwrap();
            log.sync().unwrap();
            let contents = read(&path).unwrap();
            assert_eq!(contents.records, [b"first".to_vec(), b"second".to_vec()]);
            assert_eq!(contents.damage, None);
        }
    }

    #[test]
    fn a_flipped_bit_stops_reading_at_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        written(&path, &[b"first", b"second", b"third"]);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = HEADER + 5;
        bytes[second + HEADER + 2] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let contents = read(&path).unwrap();
        assert_eq!(contents.records, [b"first".to_vec()]);
        let damage = contents.damage.unwrap();
        assert_eq!(damage.offset, second as u64);
        assert!(damage.reason.contains("checksum"), "{}", damage.reason);
        // A length past any record's is refused before anything is read.
        bytes[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let damage = read(&path).unwrap().damage.unwrap();
        assert!(damage.reason.contains("length"), "{}", damage.reason);
    }
}
