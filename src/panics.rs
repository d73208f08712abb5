//! Reading a caught panic, for the threads that catch one and log it (the
//! request guard, the disk writer). On the ground floor so that neither
//! imports the other.

use std::any::Any;

/// The text a panic was raised with.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::catch_unwind;

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let s = catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(s.as_ref()), "static");
        let f = catch_unwind(|| panic!("formatted {}", 2)).unwrap_err();
        assert_eq!(panic_message(f.as_ref()), "formatted 2");
        let other = catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(other.as_ref()), "(no message)");
    }
}
