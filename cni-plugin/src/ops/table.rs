//! Plain-text tables for operator output: left-aligned columns, two spaces apart.
//!
//! Invariant: every row has as many cells as the header.

pub struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    pub fn new(header: [&str; N]) -> Self {
        Table {
            rows: vec![header.map(String::from)],
        }
    }
    pub fn row(&mut self, cells: [String; N]) {
        self.rows.push(cells);
    }
    /// Each line starts with `indent`; trailing spaces are trimmed.
    pub fn render(&self, indent: &str) -> String {
        let mut width = [0usize; N];
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            let cells: Vec<String> = r
                .iter()
                .zip(width)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(indent);
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}
