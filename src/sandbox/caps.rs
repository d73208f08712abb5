//! Capabilities: the daemon gives up every one, in every set, once its
//! socket or mount is in place. The sets are per thread and inherited by
//! threads spawned later, so this runs before the first thread exists.

use caps::{CapSet, Capability, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("dropping capabilities ({set}): {detail}")]
    Drop { set: &'static str, detail: String },
    #[error(
        "capabilities left in the {set} set after dropping them: {left:?} (is a security \
         module refusing capset?)"
    )]
    Left {
        set: &'static str,
        left: Vec<String>,
    },
}

fn drop_error(set: &'static str) -> impl Fn(caps::errors::CapsError) -> CapsError {
    move |e| CapsError::Drop {
        set,
        detail: e.to_string(),
    }
}

/// Keeps only `keep` (empty: nothing) in the effective and permitted sets
/// of the calling thread, clears the inheritable and ambient sets, and
/// empties the bounding set except for `keep` if the thread may
/// (CAP_SETPCAP; an unprivileged process cannot, and needs not: with
/// no_new_privs nothing can raise it again). Returns whether the bounding
/// set was reduced.
pub fn keep_only(keep: &[Capability]) -> Result<bool, CapsError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set first: that needs CAP_SETPCAP in the effective set.
    let may_drop_bounding = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(drop_error("effective"))?;
    if may_drop_bounding {
        let bounding = caps::read(None, CapSet::Bounding).map_err(drop_error("bounding"))?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(drop_error("bounding"))?;
        }
        // Capabilities of kernels newer than the caps crate, by number, up
        // to the first one this kernel does not know (EINVAL).
        let last_known = Capability::CAP_CHECKPOINT_RESTORE.index();
        for index in last_known + 1..64 {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(index), 0, 0, 0) }
                != 0
            {
                break;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(drop_error("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(drop_error("inheritable"))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(drop_error("permitted"))?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    // Lowering effective first keeps effective within permitted throughout.
    caps::set(None, CapSet::Effective, &kept).map_err(drop_error("effective"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(drop_error("permitted"))?;

    // Check, rather than trust: the kernel may refuse silently only in the
    // sense that a set keeps bits we did not ask for.
    let mut sets = vec![
        ("effective", CapSet::Effective),
        ("permitted", CapSet::Permitted),
        ("inheritable", CapSet::Inheritable),
        ("ambient", CapSet::Ambient),
    ];
    if may_drop_bounding {
        sets.push(("bounding", CapSet::Bounding));
    }
    for (name, set) in sets {
        let now = caps::read(None, set).map_err(drop_error(name))?;
        let left: Vec<String> = now.difference(&keep).map(|c| c.to_string()).collect();
        if !left.is_empty() {
            return Err(CapsError::Left { set: name, left });
        }
    }
    Ok(may_drop_bounding)
}

/// Drops every capability from every set of the calling thread.
pub fn drop_all() -> Result<bool, CapsError> {
    keep_only(&[])
}
