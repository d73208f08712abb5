//! Names of the errnos the filesystem answers with, for the `errno` label
//! (`ENOENT` reads better on a dashboard than `2`).

/// The symbolic name of `errno`, or its number.
pub fn name(errno: i32) -> std::borrow::Cow<'static, str> {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::EFBIG => "EFBIG",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        other => return std::borrow::Cow::Owned(other.to_string()),
    };
    std::borrow::Cow::Borrowed(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_known_errnos_and_numbers_the_rest() {
        assert_eq!(super::name(libc::ENOENT), "ENOENT");
        assert_eq!(super::name(libc::EIO), "EIO");
        assert_eq!(super::name(4095), "4095");
    }
}
