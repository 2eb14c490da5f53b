//! Aligned columns like `kubectl get`: three spaces between columns, no borders; the STATE
//! column coloured only when writing to a terminal.

/// Colours for the STATE column (ANSI), used only on a terminal.
fn colour(state: &str) -> Option<&'static str> {
    match state {
        "awake" => Some("\x1b[32m"),
        "draining" | "waking" => Some("\x1b[33m"),
        "asleep" => Some("\x1b[34m"),
        "invalid" => Some("\x1b[31m"),
        _ => None,
    }
}

/// Renders `header` and `rows`; with `colour_column`, that column's cells get a colour by
/// state (padding stays computed on the plain text).
pub fn render(header: &[&str], rows: &[Vec<String>], colour_column: Option<usize>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            let pad = widths.get(i).copied().unwrap_or(0)
                - c.chars().count().min(widths.get(i).copied().unwrap_or(0));
            let painted = match (colour_column, colour(&c)) {
                (Some(col), Some(code)) if col == i => format!("{code}{c}\x1b[0m"),
                _ => c,
            };
            s.push_str(&painted);
            if i + 1 < n {
                s.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| (*h).to_owned()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_like_kubectl_get() {
        let out = render(
            &["NAME", "STATE"],
            &[
                vec!["web".into(), "awake".into()],
                vec!["payments".into(), "asleep".into()],
            ],
            None,
        );
        assert_eq!(
            out,
            "NAME       STATE\nweb        awake\npayments   asleep\n"
        );
    }

    #[test]
    fn colour_wraps_only_the_state_cell() {
        let out = render(
            &["STATE", "X"],
            &[vec!["asleep".into(), "1".into()]],
            Some(0),
        );
        assert!(out.contains("\x1b[34masleep\x1b[0m   1"), "{out:?}");
    }
}
