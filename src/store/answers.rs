//! Checks of the store's PathInfo answers, apart from the call that fetches
//! them, so that they run without a store (unit tests, fuzzing).

use super::directory::{validate_node, DirEntry};
use super::error::StoreError;
use crate::proto::store::PathInfo;

/// The root node of a PathInfo answered for the store path `name`, validated.
/// A PathInfo whose node carries another name counts as not found (`None`).
pub fn path_info_entry(info: &PathInfo, name: &[u8]) -> Result<Option<DirEntry>, StoreError> {
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
    Ok(Some(entry))
}
