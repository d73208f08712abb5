//! Extended attributes: the castore digests of what the guest sees, so a
//! guest can tell which blob or Directory a path is without reading it.
//! The names and the digest format are those of the store's own virtiofs
//! (`user.snix.castore.blob.digest = blake3-<base64>` from snix-store,
//! `user.tvix.castore.blob.digest = b3:<base64>` from tvix-store); a file
//! also gets its size, and a store path's root the NAR size and hash of its
//! path info. Everything comes from the inode table: no store call.

use std::io;

use fuse_backend_rs::api::filesystem::{GetxattrReply, ListxattrReply};

use crate::store::{NarInfo, Node, StoreProtocol};

/// Which names the attributes go by, and how a BLAKE3 digest is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigestXattrs {
    /// `user.tvix` or `user.snix`.
    namespace: &'static str,
    /// `b3:` (tvix) or `blake3-` (snix), before the base64 digest.
    blake3_prefix: &'static str,
}

/// One attribute: its full name and value.
pub type Attribute = (String, Vec<u8>);

impl DigestXattrs {
    /// The names and format the store speaking `protocol` uses in its own
    /// virtiofs.
    pub fn of(protocol: StoreProtocol) -> Self {
        match protocol {
            StoreProtocol::Tvix => Self {
                namespace: "user.tvix",
                blake3_prefix: "b3:",
            },
            StoreProtocol::Snix => Self {
                namespace: "user.snix",
                blake3_prefix: "blake3-",
            },
        }
    }

    fn blake3(&self, digest: &[u8; 32]) -> Vec<u8> {
        format!(
            "{}{}",
            self.blake3_prefix,
            data_encoding::BASE64.encode(digest)
        )
        .into_bytes()
    }

    /// The attributes of `node`, in listing order; `nar` for a store
    /// path's root whose path info had NAR facts. Symlinks have none (the
    /// kernel refuses `user.` attributes on them anyway).
    pub fn attributes(&self, node: &Node, nar: Option<&NarInfo>) -> Vec<Attribute> {
        let ns = self.namespace;
        let mut out = match node {
            Node::File { digest, size, .. } => vec![
                (
                    format!("{ns}.castore.blob.digest"),
                    self.blake3(digest.as_bytes()),
                ),
                (
                    format!("{ns}.castore.blob.size"),
                    size.to_string().into_bytes(),
                ),
            ],
            Node::Directory { digest, .. } => vec![(
                format!("{ns}.castore.directory.digest"),
                self.blake3(digest.as_bytes()),
            )],
            Node::Symlink { .. } => return Vec::new(),
        };
        if let Some(nar) = nar {
            out.push((
                format!("{ns}.store.narinfo.nar_size"),
                nar.size.to_string().into_bytes(),
            ));
            // SRI, as Nix writes a narHash.
            out.push((
                format!("{ns}.store.narinfo.nar_sha256"),
                format!("sha256-{}", data_encoding::BASE64.encode(&nar.sha256)).into_bytes(),
            ));
        }
        out
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// GETXATTR of `name`: the length when the guest asks with size 0, ERANGE
/// when its buffer is too short, ENODATA for a name it does not have.
pub fn get(attributes: &[Attribute], name: &[u8], size: u32) -> io::Result<GetxattrReply> {
    let (_, value) = attributes
        .iter()
        .find(|(n, _)| n.as_bytes() == name)
        .ok_or_else(|| errno(libc::ENODATA))?;
    sized(value.clone(), size).map(|reply| match reply {
        Sized::Length(n) => GetxattrReply::Count(n),
        Sized::Bytes(v) => GetxattrReply::Value(v),
    })
}

/// LISTXATTR: the names, each ending in NUL, with the same size protocol.
pub fn list(attributes: &[Attribute], size: u32) -> io::Result<ListxattrReply> {
    let mut names = Vec::new();
    for (name, _) in attributes {
        names.extend_from_slice(name.as_bytes());
        names.push(0);
    }
    sized(names, size).map(|reply| match reply {
        Sized::Length(n) => ListxattrReply::Count(n),
        Sized::Bytes(v) => ListxattrReply::Names(v),
    })
}

enum Sized {
    Length(u32),
    Bytes(Vec<u8>),
}

/// FUSE's size probe: size 0 asks for the length only.
fn sized(bytes: Vec<u8>, size: u32) -> io::Result<Sized> {
    let len = u32::try_from(bytes.len()).map_err(|_| errno(libc::E2BIG))?;
    if size == 0 {
        Ok(Sized::Length(len))
    } else if len > size {
        Err(errno(libc::ERANGE))
    } else {
        Ok(Sized::Bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::B3Digest;

    fn file() -> Node {
        Node::File {
            digest: B3Digest::of(b"hello\n"),
            size: 6,
            executable: false,
        }
    }

    #[test]
    fn names_and_format_follow_the_store() {
        let snix = DigestXattrs::of(StoreProtocol::Snix).attributes(&file(), None);
        // What snix-store's virtiofs shows for a file holding "hello\n".
        assert_eq!(snix[0].0, "user.snix.castore.blob.digest");
        assert_eq!(
            snix[0].1,
            b"blake3-jkx8G5nb/VDnqVGF/q1e4USPqQSi/dd46vXy2/1impk=".to_vec()
        );
        assert_eq!(
            snix[1],
            ("user.snix.castore.blob.size".into(), b"6".to_vec())
        );
        let tvix = DigestXattrs::of(StoreProtocol::Tvix).attributes(&file(), None);
        assert_eq!(tvix[0].0, "user.tvix.castore.blob.digest");
        assert_eq!(
            tvix[0].1,
            b"b3:jkx8G5nb/VDnqVGF/q1e4USPqQSi/dd46vXy2/1impk=".to_vec()
        );
        let link = Node::Symlink {
            target: bytes::Bytes::from_static(b"x"),
        };
        assert!(DigestXattrs::of(StoreProtocol::Snix)
            .attributes(&link, None)
            .is_empty());
    }

    #[test]
    fn a_store_paths_root_adds_its_nar_facts() {
        let dir = Node::Directory {
            digest: B3Digest::of(b"d"),
            size: 2,
        };
        let nar = NarInfo {
            size: 1234,
            sha256: [0; 32],
        };
        let attrs = DigestXattrs::of(StoreProtocol::Snix).attributes(&dir, Some(&nar));
        let names: Vec<&str> = attrs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "user.snix.castore.directory.digest",
                "user.snix.store.narinfo.nar_size",
                "user.snix.store.narinfo.nar_sha256"
            ]
        );
        assert_eq!(attrs[1].1, b"1234");
        assert_eq!(
            attrs[2].1,
            b"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
    }

    #[test]
    fn the_size_probe_and_short_buffers() {
        let attrs = DigestXattrs::of(StoreProtocol::Snix).attributes(&file(), None);
        let name = b"user.snix.castore.blob.size";
        assert!(matches!(get(&attrs, name, 0), Ok(GetxattrReply::Count(1))));
        assert!(matches!(get(&attrs, name, 1), Ok(GetxattrReply::Value(v)) if v == b"6"));
        let digest = b"user.snix.castore.blob.digest";
        let errno_of = |r: io::Result<GetxattrReply>| r.err().and_then(|e| e.raw_os_error());
        assert_eq!(errno_of(get(&attrs, digest, 10)), Some(libc::ERANGE));
        assert_eq!(
            errno_of(get(&attrs, b"user.other", 100)),
            Some(libc::ENODATA)
        );

        let listed_len = "user.snix.castore.blob.digest\0user.snix.castore.blob.size\0".len();
        assert!(
            matches!(list(&attrs, 0), Ok(ListxattrReply::Count(n)) if n as usize == listed_len)
        );
        assert_eq!(
            list(&attrs, 5).err().and_then(|e| e.raw_os_error()),
            Some(libc::ERANGE)
        );
        assert!(matches!(list(&attrs, 4096), Ok(ListxattrReply::Names(v))
            if v == b"user.snix.castore.blob.digest\0user.snix.castore.blob.size\0"));
        assert!(matches!(list(&[], 0), Ok(ListxattrReply::Count(0))));
    }
}
