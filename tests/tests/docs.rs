//! The documentation's promises about itself: every relative link in README.md and docs/
//! resolves — to a file of the repository and, with `#anchor`, to a heading of that file — and
//! every code block of the README's quick start is either run by tests/quickstart.sh or says
//! why not. Pure file reads: no root, no kernel.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// README.md and every Markdown file under docs/.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![repo().join("README.md")];
    walk(&repo().join("docs"), &mut out);
    out.sort();
    out
}

/// The lines outside fenced code blocks, with inline code spans blanked.
fn prose_lines(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut kept = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                kept.push_str(part);
            }
        }
        out.push(kept);
    }
    out
}

/// Targets of `[text](target)` and `![alt](target)` links.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            out.push(target.to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every heading's anchor in a Markdown text (a repeated heading gets `-1`, `-2`, … as on GitHub).
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    // Headings are read from the raw lines: the text of their code spans counts.
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = slug(line.trim_start_matches('#'));
        let mut a = base.clone();
        let mut n = 0;
        while !seen.insert(a.clone()) {
            n += 1;
            a = format!("{base}-{n}");
        }
    }
    seen
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in links(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let shown = format!("{}: {target}", file.strip_prefix(repo()).unwrap().display());
            if !dest.exists() {
                broken.push(format!("{shown} (no such file)"));
                continue;
            }
            if let Some(a) = anchor {
                let body = std::fs::read_to_string(&dest).unwrap_or_default();
                if !anchors(&body).contains(a) {
                    broken.push(format!("{shown} (no heading with that anchor)"));
                }
            }
        }
    }
    assert!(
        checked > 30,
        "only {checked} relative links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_checker_sees_a_broken_link() {
    let text = "# A `b` c\nsee [x](missing.md) and ![y](img.png#top)\n```\n[z](in-code.md)\n```\n";
    assert_eq!(links(text), vec!["missing.md", "img.png#top"]);
    assert!(anchors(text).contains("a-b-c"));
    assert_eq!(
        slug(" plugnet-shim: `status` and Prometheus metrics"),
        "plugnet-shim-status-and-prometheus-metrics"
    );
}

#[test]
fn every_quick_start_block_is_run_or_says_why_not() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("\n## Quick start")
        .expect("the README has a Quick start section");
    let end = readme[start + 1..]
        .find("\n## ")
        .map_or(readme.len(), |i| start + 1 + i);
    let section: Vec<&str> = readme[start..end].lines().collect();
    let mut fenced = false;
    let mut blocks = 0;
    for (i, line) in section.iter().enumerate() {
        if !line.trim_start().starts_with("```") {
            continue;
        }
        fenced = !fenced;
        if fenced {
            blocks += 1;
            let marker = if i > 0 { section[i - 1] } else { "" };
            assert!(
                marker.starts_with("<!-- quickstart: "),
                "quick-start block without a quickstart marker: {line} after {marker:?}"
            );
        }
    }
    assert!(
        blocks >= 8,
        "{blocks} blocks in the quick start: every client has one"
    );
}
