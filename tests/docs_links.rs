//! The README and the pages in docs/ link only to what is in the repository.
//!
//! Every relative link in README.md and docs/*.md must name a file or directory inside this
//! repository (the project stands alone: nothing outside it, such as a file beside the clone), and a
//! `#fragment` on a link to a Markdown file must name one of its headings, as GitHub spells the
//! anchor. Links with a scheme (`https:`, `mailto:`) are not followed. Text in code blocks and code
//! spans is not a link.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown page directly under docs/.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md")];
    let docs = root.join("docs");
    let entries =
        fs::read_dir(&docs).unwrap_or_else(|e| panic!("cannot list {}: {e}", docs.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", docs.display()))
            .path();
        if path.extension().is_some_and(|x| x == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

/// The page's text outside fenced code blocks, line by line (numbered from 1), with code spans
/// blanked out.
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut fence: Option<&str> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => lines.push((index + 1, without_code_spans(line))),
            _ => {}
        }
    }
    lines
}

fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else if in_code {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// The targets of inline links `[text](target "title")` and of reference definitions
/// `[label]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let inside = after[..end].trim();
        let target = inside.split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        if !target.is_empty() {
            targets.push(target.to_string());
        }
        rest = &after[end + 1..];
    }
    let trimmed = line.trim_start();
    if trimmed.starts_with('[') {
        if let Some(at) = trimmed.find("]:") {
            if let Some(target) = trimmed[at + 2..].split_whitespace().next() {
                targets.push(target.to_string());
            }
        }
    }
    targets
}

fn has_scheme(target: &str) -> bool {
    match target.find(':') {
        Some(colon) => {
            let scheme = &target[..colon];
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        None => false,
    }
}

/// The anchors GitHub makes for a page's headings: lower case, letters, digits, `-` and `_` kept,
/// spaces turned into `-`, everything else dropped; a repeated anchor gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose_lines_keeping_code_spans(text) {
        let heading = line.trim_start_matches('#');
        if heading.len() == line.len() || !heading.starts_with(' ') {
            continue;
        }
        let slug: String = heading
            .trim()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                '-' | '_' => Some(c),
                c if c.is_alphanumeric() => Some(c),
                _ => None,
            })
            .flat_map(char::to_lowercase)
            .collect();
        let mut candidate = slug.clone();
        let mut n = 1;
        while seen.contains(&candidate) {
            candidate = format!("{slug}-{n}");
            n += 1;
        }
        seen.insert(candidate);
    }
    seen
}

/// Headings keep their code spans' text (GitHub's anchor keeps it).
fn prose_lines_keeping_code_spans(text: &str) -> Vec<(usize, String)> {
    let blanked = prose_lines(text);
    let lines: Vec<&str> = text.lines().collect();
    blanked
        .into_iter()
        .map(|(n, _)| (n, lines[n - 1].to_string()))
        .collect()
}

/// What is wrong with `target`, linked from `page`, if anything.
fn check(root: &Path, page: &Path, text: &str, target: &str) -> Option<String> {
    if has_scheme(target) {
        return None;
    }
    let (path, fragment) = match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (target, None),
    };
    let (resolved, linked_text) = if path.is_empty() {
        (page.to_path_buf(), Some(text.to_string()))
    } else {
        let base = page.parent().unwrap_or(root);
        let resolved = base.join(path);
        let Ok(canonical) = resolved.canonicalize() else {
            return Some(format!(
                "'{path}' does not exist (looked for {})",
                resolved.display()
            ));
        };
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        if !canonical.starts_with(&root) {
            return Some(format!(
                "'{path}' is outside the repository ({}): bring what the reader needs into docs/",
                canonical.display()
            ));
        }
        let linked_text = if canonical.extension().is_some_and(|x| x == "md") {
            fs::read_to_string(&canonical).ok()
        } else {
            None
        };
        (canonical, linked_text)
    };
    let (Some(fragment), Some(linked_text)) = (fragment, linked_text) else {
        return None;
    };
    let known = anchors(&linked_text);
    if known.contains(fragment) {
        return None;
    }
    Some(format!(
        "'#{fragment}' is not a heading of {} (its anchors: {})",
        resolved.display(),
        known.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

#[test]
fn every_relative_link_in_the_readme_and_docs_names_a_file_in_the_repository() {
    let root = repository();
    let mut dead = Vec::new();
    let mut checked = 0;
    for page in pages(&root) {
        let text = fs::read_to_string(&page)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
        let shown = page
            .strip_prefix(&root)
            .unwrap_or(&page)
            .display()
            .to_string();
        for (number, line) in prose_lines(&text) {
            for target in link_targets(&line) {
                checked += 1;
                if let Some(problem) = check(&root, &page, &text, &target) {
                    dead.push(format!("{shown}:{number}: ({target}) {problem}"));
                }
            }
        }
    }
    assert!(
        checked > 0,
        "no links found at all: is the link reader broken?"
    );
    assert!(
        dead.is_empty(),
        "{} dead link(s) in README.md and docs/ (fix the link or add the page):\n{}",
        dead.len(),
        dead.join("\n")
    );
}

/// The pages `page` links to, as canonical paths (dead links are the test above's business).
fn linked_pages(root: &Path, page: &Path) -> BTreeSet<PathBuf> {
    let text =
        fs::read_to_string(page).unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
    let base = page.parent().unwrap_or(root);
    prose_lines(&text)
        .into_iter()
        .flat_map(|(_, line)| link_targets(&line))
        .filter(|target| !has_scheme(target))
        .filter_map(|target| {
            let path = target.split('#').next().unwrap_or("").to_string();
            (!path.is_empty()).then(|| base.join(path))
        })
        .filter_map(|path| path.canonicalize().ok())
        .collect()
}

#[test]
fn every_page_in_docs_is_linked_from_the_readme_or_another_page() {
    let root = repository();
    let pages = pages(&root);
    let mut linked = BTreeSet::new();
    for page in &pages {
        let own = page.canonicalize().unwrap_or_else(|_| page.clone());
        linked.extend(linked_pages(&root, page).into_iter().filter(|p| *p != own));
    }
    let unlinked: Vec<String> = pages
        .iter()
        .filter(|page| !page.ends_with("README.md"))
        .filter(|page| !linked.contains(&page.canonicalize().unwrap_or_else(|_| (*page).clone())))
        .map(|page| {
            page.strip_prefix(&root)
                .unwrap_or(page)
                .display()
                .to_string()
        })
        .collect();
    assert!(
        unlinked.is_empty(),
        "no page links to {}: link each from the README's tour or reading list, or from a page \
         that covers its subject",
        unlinked.join(", ")
    );
}

#[test]
fn the_link_reader_finds_links_and_skips_code() {
    assert_eq!(
        link_targets("see [a](docs/a.md) and [b](b.md#x \"t\")"),
        ["docs/a.md", "b.md#x"]
    );
    assert_eq!(link_targets("[ref]: ../x.md"), ["../x.md"]);
    let text = "[real](r.md)\n```sh\n[in](fence.md)\n```\n`[span](span.md)` [after](after.md)\n";
    let found: Vec<String> = prose_lines(text)
        .into_iter()
        .flat_map(|(_, line)| link_targets(&line))
        .collect();
    assert_eq!(found, ["r.md", "after.md"]);
    assert!(has_scheme("https://example.com/x"));
    assert!(!has_scheme("docs/a.md"));
    assert!(!has_scheme("#anchor"));
    let headings = anchors("# Title\n## `infrakit` and the CLI\n## Title\n");
    assert!(headings.contains("title"));
    assert!(headings.contains("infrakit-and-the-cli"));
    assert!(headings.contains("title-1"));
}

#[test]
fn a_dead_link_and_an_unknown_heading_are_reported() {
    let root = repository();
    let page = root.join("README.md");
    assert!(check(&root, &page, "", "docs/no-such-page.md").is_some());
    assert!(check(&root, &page, "", "docs/design.md#no-such-heading").is_some());
    assert!(check(&root, &page, "", "docs/design.md").is_none());
    assert!(check(&root, &page, "", "https://github.com/docker/infrakit").is_none());
}

#[test]
fn a_link_that_leaves_the_repository_is_reported_even_when_its_target_exists() {
    let scratch = std::env::temp_dir().join(format!("infrakit-docs-links-{}", std::process::id()));
    let repo = scratch.join("repo");
    fs::create_dir_all(repo.join("docs")).expect("make a scratch repository");
    fs::write(scratch.join("notes.md"), "# Notes\n").expect("write a page outside it");
    fs::write(repo.join("docs/inside.md"), "# Inside\n").expect("write a page inside it");
    let page = repo.join("README.md");
    let outside = check(&repo, &page, "", "../notes.md");
    let inside = check(&repo, &page, "", "docs/inside.md#inside");
    let _ = fs::remove_dir_all(&scratch);
    let outside = outside.expect("a link to ../notes.md must be reported");
    assert!(outside.contains("outside the repository"), "{outside}");
    assert_eq!(inside, None);
}
