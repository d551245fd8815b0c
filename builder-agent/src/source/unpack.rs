//! Recognising a downloaded build package by its content and unpacking it (blocking code).
//!
//! Quay trusts the `Content-Type` header and so refuses uncompressed tarballs and mistakes
//! `application/octet-stream` tarballs for Dockerfiles (reference 4.3). We look at the bytes:
//! gzip `1f 8b`, zip `PK\x03\x04`, tar `ustar` at offset 257 (or a valid v7 header checksum),
//! otherwise UTF-8 text without NUL bytes is a bare Dockerfile.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use super::Limits;
use super::error::{SourceError, UnsafeReason};
use super::extract::{Extractor, Summary};

/// How much of the file `sniff` looks at.
const SNIFF_LEN: usize = 8192;

/// What a build package turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Tar,
    TarGz,
    Zip,
    Dockerfile,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Tar => "tar",
            Kind::TarGz => "tar.gz",
            Kind::Zip => "zip",
            Kind::Dockerfile => "Dockerfile",
        }
    }
}

/// Recognises a package from its first bytes; `Err` describes what it is instead.
pub(super) fn sniff(head: &[u8]) -> Result<Kind, &'static str> {
    if head.is_empty() {
        return Err("an empty file");
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Kind::TarGz);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Kind::Zip);
    }
    if looks_like_tar(head) {
        return Ok(Kind::Tar);
    }
    if head.len() >= 10 && head.starts_with(b"BZh") && &head[4..10] == b"1AY&SY" {
        return Err("a bzip2 file");
    }
    if head.starts_with(b"\xfd7zXZ\x00") {
        return Err("an xz file");
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err("a zstd file");
    }
    if head.starts_with(b"7z\xbc\xaf\x27\x1c") {
        return Err("a 7z archive");
    }
    if head.starts_with(b"Rar!") {
        return Err("a rar archive");
    }
    if is_text(head) {
        return Ok(Kind::Dockerfile);
    }
    Err("binary data of an unknown type")
}

/// A POSIX/GNU tar header (`ustar` magic), or an old v7 header with a valid checksum.
fn looks_like_tar(head: &[u8]) -> bool {
    let Some(block) = head.get(..512) else {
        return false;
    };
    if &block[257..262] == b"ustar" {
        return true;
    }
    if block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Ok(text) = std::str::from_utf8(&digits) else {
        return false;
    };
    let Ok(stored) = u64::from_str_radix(text, 8) else {
        return false;
    };
    // The checksum is the byte sum of the header with its own field read as spaces.
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| u64::from(if (148..156).contains(&i) { b' ' } else { b }))
        .sum();
    sum == stored
}

/// UTF-8 without NUL bytes; a multi-byte character cut by the end of the sample is fine.
fn is_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// Unpacks the downloaded `file` into `root`. `label` names the source in errors.
pub(super) fn unpack(
    file: &Path,
    root: &Path,
    limits: &Limits,
    label: &str,
) -> Result<(Kind, Summary), SourceError> {
    let io_err = |op, e| SourceError::Io {
        op,
        path: file.to_owned(),
        source: e,
    };
    let mut f = File::open(file).map_err(|e| io_err("opening", e))?;
    let head = read_head(&mut f).map_err(|e| io_err("reading", e))?;
    let unsupported = |kind| SourceError::UnsupportedArchive {
        url: label.to_owned(),
        kind,
    };
    let kind = sniff(&head).map_err(unsupported)?;
    f.rewind().map_err(|e| io_err("reading", e))?;
    let mut ex = Extractor::new(root, limits, label, kind.name());
    match kind {
        Kind::Tar => unpack_tar(BufReader::new(f), &mut ex, limits, label)?,
        Kind::TarGz => {
            // Look inside before unpacking, to say "gzip but not a tarball" plainly.
            let inner = read_head(&mut MultiGzDecoder::new(BufReader::new(&f)))
                .map_err(|e| ex.corrupt(e))?;
            if !looks_like_tar(&inner) {
                return Err(unsupported(
                    "gzip-compressed data that is not a tar archive",
                ));
            }
            f.rewind().map_err(|e| io_err("reading", e))?;
            unpack_tar(
                MultiGzDecoder::new(BufReader::new(f)),
                &mut ex,
                limits,
                label,
            )?
        }
        Kind::Zip => unpack_zip(f, &mut ex, limits, label)?,
        Kind::Dockerfile => {
            ex.count_entry()?;
            ex.file(b"Dockerfile", 0o644, None, &mut BufReader::new(f))?
        }
    }
    Ok((kind, ex.finish()?))
}

fn read_head(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    r.take(SNIFF_LEN as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Caps the bytes read from the (decompressed) tar stream. The extractor counts file content,
/// but the tar crate reads GNU long names and PAX headers into memory whole and skips the data of
/// entries it consumes itself; this bounds both.
struct CappedReader<R> {
    inner: R,
    left: u64,
    tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            self.tripped.set(true);
            return Err(io::Error::other("archive stream exceeds its size limit"));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn unpack_tar(
    reader: impl Read,
    ex: &mut Extractor<'_>,
    limits: &Limits,
    label: &str,
) -> Result<(), SourceError> {
    let tripped = Rc::new(Cell::new(false));
    // Content plus a generous allowance for headers and padding (512 + 511 bytes per entry).
    let cap = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(1024))
        .saturating_add(1 << 20);
    let capped = CappedReader {
        inner: reader,
        left: cap,
        tripped: Rc::clone(&tripped),
    };
    let result = tar_entries(tar::Archive::new(capped), ex);
    if tripped.get() {
        return Err(SourceError::TooLarge {
            what: format!("the decompressed archive from {label}"),
            limit: limits.max_bytes,
        });
    }
    result
}

fn tar_entries<R: Read>(
    mut archive: tar::Archive<R>,
    ex: &mut Extractor<'_>,
) -> Result<(), SourceError> {
    let entries = archive.entries().map_err(|e| ex.corrupt(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ex.corrupt(e))?;
        ex.count_entry()?;
        let path = entry.path_bytes().into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                ex.file(&path, mode, mtime, &mut entry)?
            }
            EntryType::Directory => ex.dir(&path, mode)?,
            EntryType::Symlink => ex.symlink(&path, link.as_deref().unwrap_or_default())?,
            EntryType::Link => ex.hardlink(&path, link.as_deref().unwrap_or_default())?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(SourceError::unsafe_entry(&path, UnsafeReason::Device));
            }
            // Metadata for the whole archive (e.g. git's commit id): nothing to write.
            EntryType::XGlobalHeader => {}
            other => {
                return Err(SourceError::unsafe_entry(
                    &path,
                    UnsafeReason::UnsupportedType {
                        kind: format!("{other:?}"),
                    },
                ));
            }
        }
    }
    Ok(())
}

fn unpack_zip(
    file: File,
    ex: &mut Extractor<'_>,
    limits: &Limits,
    label: &str,
) -> Result<(), SourceError> {
    let unsupported = || SourceError::UnsupportedArchive {
        url: label.to_owned(),
        kind: "a zip archive with encrypted entries or a compression method other than deflate",
    };
    let zip_err = |ex: &Extractor<'_>, e: zip::result::ZipError| match e {
        zip::result::ZipError::UnsupportedArchive(_)
        | zip::result::ZipError::CompressionMethodNotSupported(_) => unsupported(),
        other => ex.corrupt(io::Error::other(other)),
    };
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| zip_err(ex, e))?;
    if u64::try_from(zip.len()).unwrap_or(u64::MAX) > limits.max_entries {
        return Err(SourceError::TooManyEntries {
            what: format!("the archive from {label}"),
            limit: limits.max_entries,
        });
    }
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| zip_err(ex, e))?;
        ex.count_entry()?;
        let name = f.name().as_bytes().to_vec();
        let mode = f.unix_mode();
        match mode.map(|m| m & 0o170000) {
            Some(0o120000) => {
                let mut target = Vec::new();
                (&mut f)
                    .take(4096)
                    .read_to_end(&mut target)
                    .map_err(|e| ex.corrupt(e))?;
                ex.symlink(&name, &target)?;
            }
            Some(0o020000 | 0o060000 | 0o010000 | 0o140000) => {
                return Err(SourceError::unsafe_entry(&name, UnsafeReason::Device));
            }
            Some(0o040000) => ex.dir(&name, mode.unwrap_or(0o755))?,
            _ if f.is_dir() => ex.dir(&name, mode.unwrap_or(0o755))?,
            _ => ex.file(&name, mode.unwrap_or(0o644), None, &mut f)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn tar_with(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn content_decides_the_kind() {
        let tar = tar_with("Dockerfile", b"FROM scratch\n");
        assert_eq!(sniff(&tar), Ok(Kind::Tar));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        assert_eq!(sniff(&gz.finish().unwrap()), Ok(Kind::TarGz));
        assert_eq!(sniff(b"PK\x03\x04rest"), Ok(Kind::Zip));
        assert_eq!(sniff(b"FROM busybox\nRUN echo hi\n"), Ok(Kind::Dockerfile));
        assert_eq!(sniff(b""), Err("an empty file"));
        assert_eq!(sniff(b"BZh91AY&SYxxxx"), Err("a bzip2 file"));
        assert_eq!(
            sniff(b"\x00\x01\x02binary"),
            Err("binary data of an unknown type")
        );
        // "é" cut in half by the end of the sample is still text.
        assert_eq!(sniff(b"FROM x\n# caf\xc3"), Ok(Kind::Dockerfile));
    }

    #[test]
    fn a_v7_tar_without_magic_is_recognised_by_its_checksum() {
        let mut tar = tar_with("Dockerfile", b"FROM scratch\n");
        // Blank the ustar magic and version, then fix the checksum as a v7 writer would.
        tar[257..265].fill(0);
        let mut h = tar::Header::from_byte_slice(&tar[..512]).clone();
        h.set_cksum();
        tar[..512].copy_from_slice(h.as_bytes());
        assert_eq!(sniff(&tar), Ok(Kind::Tar));
        tar[0] ^= 1; // a wrong checksum
        assert_ne!(sniff(&tar), Ok(Kind::Tar));
    }

    #[test]
    fn gzip_of_something_else_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("pkg");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"FROM scratch\n").unwrap();
        std::fs::write(&file, gz.finish().unwrap()).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let err = unpack(&file, &root, &Limits::default(), "http://h/p").unwrap_err();
        assert!(
            matches!(err, SourceError::UnsupportedArchive { kind, .. } if kind.contains("not a tar")),
        );
    }

    #[test]
    fn a_truncated_gzip_tar_is_corrupt_not_a_local_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("pkg");
        let tar = tar_with("big", &vec![7u8; 200_000]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let bytes = gz.finish().unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let err = unpack(&file, &root, &Limits::default(), "http://h/p").unwrap_err();
        assert!(
            matches!(err, SourceError::CorruptArchive { kind: "tar.gz", .. }),
            "{err:?}"
        );
        assert!(err.is_user_error());
    }
}
