//! ASCII tables as the AMD tools draw them: `+---+---+` borders and `| a | b |` rows.

/// The cells of a table row (`| a | b |` → `["a", "b"]`), or `None` for other lines.
pub(crate) fn row_cells(line: &str) -> Option<Vec<String>> {
    let line = line.trim();
    let inner = line.strip_prefix('|')?;
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    Some(inner.split('|').map(|c| c.trim().to_owned()).collect())
}

/// True for a border line (`+----+----+`).
pub(crate) fn is_border(line: &str) -> bool {
    let line = line.trim();
    line.starts_with('+') && line.chars().all(|c| c == '+' || c == '-')
}
