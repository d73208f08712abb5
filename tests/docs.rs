//! The documentation against the program: every long flag that `--help`
//! prints is described in docs/configuration.md, the README stays short,
//! and every relative link of the README and docs/ (and of
//! systemd/README.md) points at a file, and at a heading, that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The README is the front page; the rest lives in docs/.
const README_MAX_LINES: usize = 250;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every `--name` in `text`: two dashes not preceded by a word character
/// or a dash, then a lowercase letter or digit, then letters, digits and
/// single dashes (`--store` in `--store-timeout` does not count).
fn long_flags(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut flags = BTreeSet::new();
    let mut i = 0;
    while i + 2 < bytes.len() {
        let starts = bytes[i] == b'-'
            && bytes[i + 1] == b'-'
            && word(bytes[i + 2])
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'-'));
        if !starts {
            i += 1;
            continue;
        }
        let mut end = i + 2;
        while end < bytes.len() && (word(bytes[end]) || bytes[end] == b'-') {
            end += 1;
        }
        let flag = text[i..end].trim_end_matches('-');
        flags.insert(flag.to_owned());
        i = end;
    }
    flags
}

/// The flags of `help` that `doc` never names.
fn undocumented(help: &str, doc: &str) -> Vec<String> {
    let documented = long_flags(doc);
    long_flags(help)
        .into_iter()
        .filter(|flag| !documented.contains(flag))
        .collect()
}

fn help_text() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tvix-virtiofsd"))
        .arg("--help")
        .output()
        .expect("running tvix-virtiofsd --help");
    assert!(out.status.success(), "--help failed: {out:?}");
    String::from_utf8(out.stdout).expect("--help prints UTF-8")
}

#[test]
fn every_flag_of_help_is_in_the_configuration_page() {
    let help = help_text();
    let flags = long_flags(&help);
    // The scan found the options at all (and the two clap adds).
    for expected in [
        "--socket-path",
        "--store",
        "--cache-dir",
        "--help",
        "--version",
    ] {
        assert!(
            flags.contains(expected),
            "{expected} not found in --help: {flags:?}"
        );
    }
    let page = repo().join("docs/configuration.md");
    let missing = undocumented(&help, &read(&page));
    assert!(
        missing.is_empty(),
        "{} does not describe these flags of --help: {}",
        page.display(),
        missing.join(" ")
    );
}

#[test]
fn a_flag_missing_from_the_page_is_reported() {
    let help = "  --socket-path <PATH>\n  --made-up-flag <N>\n      see --store-timeout\n";
    let doc = "| `--socket-path PATH` | | ... |\n| `--store-timeout-extra` | |\n";
    assert_eq!(
        undocumented(help, doc),
        ["--made-up-flag", "--store-timeout"]
    );
    assert_eq!(
        long_flags("a --b-c, x--y, `--z`; ---w --9p -h"),
        BTreeSet::from(["--b-c".to_owned(), "--z".to_owned(), "--9p".to_owned()])
    );
}

#[test]
fn readme_is_short() {
    let lines = read(&repo().join("README.md")).lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, at most {README_MAX_LINES} allowed: move text into docs/"
    );
}

/// The pages whose links are checked.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md"), repo().join("systemd/README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(repo().join("docs"))
        .expect("reading docs/")
        .map(|e| e.expect("reading docs/").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines of a markdown page outside fenced code blocks, with what is
/// inside inline code spans dropped unless `keep_code`.
fn prose_lines(text: &str, keep_code: bool) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut prose = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                prose.push(c);
            } else if keep_code || !in_code {
                prose.push(c);
            }
        }
        lines.push((n + 1, prose));
    }
    lines
}

/// Link targets (`](target)`) of a page, with their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for (n, line) in prose_lines(text, false) {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            targets.push((n, target.to_owned()));
            rest = &rest[end..];
        }
    }
    targets
}

/// The anchors GitHub gives a page's headings: lowercase, punctuation
/// dropped, spaces as dashes, repeats numbered.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text, true) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

#[test]
fn relative_links_point_at_what_exists() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().expect("a page is in a directory");
        for (line, target) in link_targets(&text) {
            if target.is_empty()
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.starts_with('/')
            {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                dir.join(path)
            };
            let at = format!("{}:{line}: {target}", page.display());
            if !file.exists() {
                broken.push(format!("{at}: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_markdown = file.extension().is_some_and(|x| x == "md");
                if is_markdown && !anchors(&read(&file)).contains(anchor) {
                    broken.push(format!("{at}: no such heading"));
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} relative links found");
    assert!(
        broken.is_empty(),
        "broken relative links:\n{}",
        broken.join("\n")
    );
}

#[test]
fn anchors_follow_github() {
    let page =
        "# Top\n## With microvm.nix\n## `--cache` and you\n```sh\n# not a heading\n```\n## Top\n";
    assert_eq!(
        anchors(page),
        BTreeSet::from(["top", "with-microvmnix", "--cache-and-you", "top-1"].map(String::from))
    );
}
