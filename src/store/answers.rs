//! Checks of the store's PathInfo answers, apart from the call that fetches
//! them, so that they run without a store (unit tests, fuzzing).

use bytes::Bytes;

use super::directory::{node_encoding, validate_node, DirEntry};
use super::error::StoreError;
use crate::proto::store::{self as proto, PathInfo};

/// What the store says about a store path's NAR serialization. It is the
/// store's claim, passed on as such: only serializing the whole tree could
/// check it, and nothing the guest reads depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub size: u64,
    pub sha256: [u8; 32],
}

/// A store path as PathInfoService answered for it: its root node,
/// validated, and its NAR facts if the store sent well-formed ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorePathInfo {
    pub entry: DirEntry,
    pub nar: Option<NarInfo>,
}

impl StorePathInfo {
    /// The PathInfo that [`validate_path_info`] turns back into this
    /// (without references or signatures: nothing here uses them).
    pub fn encoding(&self) -> PathInfo {
        PathInfo {
            node: Some(node_encoding(&self.entry)),
            narinfo: self.nar.map(|nar| proto::NarInfo {
                nar_size: nar.size,
                nar_sha256: Bytes::copy_from_slice(&nar.sha256),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The PathInfo answered for the store path `name`, validated. A PathInfo
/// whose node carries another name counts as not found (`None`). A NAR
/// hash that is not 32 bytes is dropped with a warning: the node alone is
/// what serving the path needs.
pub fn validate_path_info(
    info: &PathInfo,
    name: &[u8],
) -> Result<Option<StorePathInfo>, StoreError> {
    let shown = String::from_utf8_lossy(name);
    let invalid = |reason: String| StoreError::InvalidPathInfo {
        name: shown.to_string(),
        reason,
    };
    let node = info
        .node
        .as_ref()
        .ok_or_else(|| invalid("no node".into()))?;
    let entry = validate_node(node).map_err(|e| invalid(e.to_string()))?;
    if entry.name != name {
        tracing::warn!(
            asked = %shown,
            got = %String::from_utf8_lossy(&entry.name),
            "store answered with a path info of another name; treating as not found"
        );
        return Ok(None);
    }
    let nar =
        info.narinfo
            .as_ref()
            .and_then(|n| match <[u8; 32]>::try_from(n.nar_sha256.as_ref()) {
                Ok(sha256) => Some(NarInfo {
                    size: n.nar_size,
                    sha256,
                }),
                Err(_) => {
                    tracing::warn!(
                        store_path = %shown,
                        len = n.nar_sha256.len(),
                        "path info with a NAR hash that is not 32 bytes; serving it without"
                    );
                    None
                }
            });
    Ok(Some(StorePathInfo { entry, nar }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{B3Digest, Node};

    fn info(name: &'static [u8]) -> StorePathInfo {
        StorePathInfo {
            entry: DirEntry {
                name: Bytes::from_static(name),
                node: Node::Directory {
                    digest: B3Digest::of(b"d"),
                    size: 3,
                },
            },
            nar: Some(NarInfo {
                size: 4096,
                sha256: [7; 32],
            }),
        }
    }

    #[test]
    fn path_infos_round_trip_with_their_nar_facts() {
        let name = b"00bgd045z0d4icpbc2yyz4gx48ak44la-x";
        let kept = info(name);
        let back = validate_path_info(&kept.encoding(), name).unwrap();
        assert_eq!(back, Some(kept));
    }

    #[test]
    fn a_malformed_nar_hash_is_dropped_and_another_name_is_not_found() {
        let name = b"00bgd045z0d4icpbc2yyz4gx48ak44la-x";
        let mut encoded = info(name).encoding();
        encoded.narinfo.as_mut().unwrap().nar_sha256 = Bytes::from_static(&[1; 20]);
        let back = validate_path_info(&encoded, name).unwrap().unwrap();
        assert_eq!(back.nar, None);
        assert_eq!(back.entry, info(name).entry);
        assert_eq!(
            validate_path_info(&encoded, b"00bgd045z0d4icpbc2yyz4gx48ak44la-y").unwrap(),
            None
        );
        encoded.node = None;
        assert!(validate_path_info(&encoded, name).is_err());
    }
}
