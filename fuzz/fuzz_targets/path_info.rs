//! A store path's root node and NAR facts: in a PathInfo from the store
//! (PathInfoService.Get and List), and as the disk cache keeps it (the
//! PathInfo re-encoded from what passed validation).

// libFuzzer's main, except in a test build (fuzz/Cargo.toml).
#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tvix_virtiofsd::proto::{castore, store};
use tvix_virtiofsd::store::answers::validate_path_info;
use tvix_virtiofsd::store::directory::{
    is_valid_name, validate_node, DirEntry, Node, MAX_SYMLINK_TARGET,
};
use tvix_virtiofsd::store::store_path;

fn check(entry: &DirEntry) {
    assert!(is_valid_name(&entry.name));
    if let Node::Symlink { target } = &entry.node {
        assert!(!target.is_empty() && !target.contains(&0));
        assert!(target.len() <= MAX_SYMLINK_TARGET);
    }
}

fuzz_target!(|data: &[u8]| {
    // From the store: the node must carry the name that was asked for.
    if let Ok(info) = store::PathInfo::decode(data) {
        let name = info.node.as_ref().and_then(|n| match &n.node {
            Some(castore::node::Node::Directory(d)) => Some(d.name.clone()),
            Some(castore::node::Node::File(f)) => Some(f.name.clone()),
            Some(castore::node::Node::Symlink(s)) => Some(s.name.clone()),
            None => None,
        });
        let asked = name.unwrap_or_default();
        if let Ok(found) = validate_path_info(&info, &asked) {
            let found = found.expect("the name asked for is the node's");
            assert_eq!(found.entry.name, asked);
            check(&found.entry);
            // What the disk cache writes reads back as the same answer.
            let kept = validate_path_info(&found.encoding(), &asked).expect("re-encoded");
            assert_eq!(kept.as_ref(), Some(&found));
            let entry = found.entry;
            // The listing keeps only store path names; parsing must agree.
            let _ = store_path::parse(&entry.name);
        }
        let mut other = asked.to_vec();
        other.push(b'x');
        if let Ok(found) = validate_path_info(&info, &other) {
            assert!(found.is_none(), "a node of another name was taken");
        }
    }
    // A bare node, as List entries and Directories carry them.
    if let Ok(node) = castore::Node::decode(data) {
        if let Ok(entry) = validate_node(&node) {
            check(&entry);
        }
    }
});
