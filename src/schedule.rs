//! Schedule files → validated subscriptions.
//!
//! Only regular `*.toml` files directly in the schedules folder are read (hidden ones are ignored); symbolic links,
//! anything resolving outside the folder and files over [`MAX_FILE_BYTES`] are refused. Each file
//! is parsed with toml's spanned document API and walked by hand, so that **every** problem in a
//! file is reported as `path:line:column: field: message`, not only the first. A file with any
//! error contributes no subscription (files are all-or-nothing); other files are unaffected.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Serialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::billing::CatchUp;
use crate::billing::{self, Cadence, Limits, SubscriptionState, Terms};
use crate::money::{Currency, Money};

/// Largest schedule file read; larger ones are refused before reading.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Longest subscription id (keeps the derived OrderNumber well under Assist's 128 characters).
pub const MAX_ID_LEN: usize = 40;

/// A validated subscription from a schedule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    /// The merchant's CustomerNumber, for operators and the token services.
    pub customer: Option<String>,
    /// Billnumber of the initial recurring payment at Assist: the agreement.
    pub bill_number: String,
    pub currency: Currency,
    pub terms: Terms,
    /// Where it was defined.
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub path: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, located: `path:line:column: field: message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The key it is about (`limits.period_days`), or what was being read (`file`, `toml`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let warning = if self.severity == Severity::Warning {
            "warning: "
        } else {
            ""
        };
        write!(
            f,
            "{}:{}:{}: {}: {warning}{}",
            self.path.display(),
            self.line,
            self.column,
            self.field,
            self.message
        )
    }
}

/// What one file gave: its subscriptions if it has no error, and every diagnostic.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    pub subscriptions: Vec<Subscription>,
    pub diagnostics: Vec<Diagnostic>,
}

impl FileReport {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// What the folder gave, files in name order.
#[derive(Debug, Clone, Default)]
pub struct DirReport {
    pub files: Vec<FileReport>,
}

impl DirReport {
    /// Subscriptions of the files without errors.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.files
            .iter()
            .filter(|f| !f.has_errors())
            .flat_map(|f| f.subscriptions.iter())
    }

    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.files.iter().flat_map(|f| f.diagnostics.iter())
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn warning_count(&self) -> usize {
        self.diagnostics()
            .filter(|d| d.severity == Severity::Warning)
            .count()
    }
}

/// The folder itself could not be read.
#[derive(Debug, thiserror::Error)]
#[error("schedules folder {path}: {message}")]
pub struct DirError {
    pub path: PathBuf,
    pub message: String,
}

/// Reads every schedule file in `dir`, then checks ids and bill numbers across files: a clash is
/// an error in the later file (by name) that names the earlier one.
pub fn load_dir(dir: &Path) -> Result<DirReport, DirError> {
    let (canonical_dir, paths) = list_dir(dir)?;
    let mut report = DirReport::default();
    for path in paths {
        report.files.push(load_file(&path, &canonical_dir));
    }
    check_across_files(&mut report);
    Ok(report)
}

/// The schedule files of `dir` (regular-looking `*.toml` names, hidden ones left out) in name
/// order, and the folder's canonical path for [`read_text`]. Nothing is read yet: for callers
/// that take the files one at a time.
pub fn list_dir(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), DirError> {
    let dir_error = |message: String| DirError {
        path: dir.to_path_buf(),
        message,
    };
    let canonical_dir = dir
        .canonicalize()
        .map_err(|e| dir_error(format!("cannot open it: {e}")))?;
    let entries = std::fs::read_dir(dir).map_err(|e| dir_error(format!("cannot list it: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| dir_error(format!("cannot list it: {e}")))?;
        let path = entry.path();
        // Hidden files are editors' (an Emacs lock file `.#plan.toml` is a dangling link).
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.extension().is_some_and(|ext| ext == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok((canonical_dir, paths))
}

/// One file's text, after the same refusals as [`load_file`] (a link, not a regular file,
/// outside the folder, too big, not UTF-8); the error is the file's diagnostic.
pub fn read_text(path: &Path, canonical_dir: &Path) -> Result<String, Diagnostic> {
    read_checked(path, canonical_dir).map_err(|message| Diagnostic {
        severity: Severity::Error,
        path: path.to_path_buf(),
        line: 1,
        column: 1,
        field: "file".to_string(),
        message,
    })
}

/// Reads one schedule file, which must sit directly in `canonical_dir`.
pub fn load_file(path: &Path, canonical_dir: &Path) -> FileReport {
    let mut report = FileReport {
        path: path.to_path_buf(),
        subscriptions: Vec::new(),
        diagnostics: Vec::new(),
    };
    match read_checked(path, canonical_dir) {
        Ok(text) => parse_file(path, &text, &mut report),
        Err(message) => report.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            field: "file".to_string(),
            message,
        }),
    }
    report
}

/// The file's bytes as UTF-8, after the refusals; the error is the diagnostic's message.
fn read_checked(path: &Path, canonical_dir: &Path) -> Result<String, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if meta.file_type().is_symlink() {
        return Err("is a symbolic link; refused (put the file itself in the folder)".to_string());
    }
    if !meta.is_file() {
        return Err("is not a regular file; refused".to_string());
    }
    let canonical = path
        .canonicalize()
        .map_err(|e| format!("cannot read it: {e}"))?;
    if canonical.parent() != Some(canonical_dir) {
        return Err("resolves outside the schedules folder; refused".to_string());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "is {} bytes, over the {MAX_FILE_BYTES}-byte limit; refused",
            meta.len()
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut bytes = Vec::new();
    // The size was checked, but the file may grow between the check and the read.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("is over the {MAX_FILE_BYTES}-byte limit; refused"));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let text = String::from_utf8_lossy(valid);
        let (line, column) = line_column(&text, text.len());
        format!("invalid UTF-8 at line {line}, column {column}; schedule files must be UTF-8")
    })
}

/// Parses a schedule file's text; public for tests and for tools that hold the text already.
pub fn parse_text(path: &Path, text: &str) -> FileReport {
    let mut report = FileReport {
        path: path.to_path_buf(),
        subscriptions: Vec::new(),
        diagnostics: Vec::new(),
    };
    parse_file(path, text, &mut report);
    report
}

fn parse_file(path: &Path, text: &str, report: &mut FileReport) {
    let mut walker = Walker {
        path,
        text,
        lines: LineIndex::new(text),
        diagnostics: Vec::new(),
    };
    let (document, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for error in syntax_errors {
            let span = error.span().unwrap_or(0..0);
            walker.error(span, "toml", error.message().trim().to_string());
        }
        report.diagnostics = walker.diagnostics;
        sort_by_location(&mut report.diagnostics);
        return;
    }
    let document = document.into_inner();
    for (key, value) in document.iter() {
        if key.get_ref() != "subscription" {
            let hint = if did_you_mean(key.get_ref(), &["subscription"]).is_some() {
                "did you mean `subscription`? "
            } else {
                ""
            };
            walker.error(
                key.span(),
                key.get_ref(),
                format!("unknown key; {hint}a schedule file holds only [[subscription]] tables"),
            );
            continue;
        }
        let DeValue::Array(entries) = value.get_ref() else {
            walker.error(
                value.span(),
                "subscription",
                "must be written as [[subscription]] tables".to_string(),
            );
            continue;
        };
        for entry in entries.iter() {
            match entry.get_ref() {
                DeValue::Table(table) => {
                    if let Some(subscription) = walker.subscription(table, entry.span()) {
                        report.subscriptions.push(subscription);
                    }
                }
                _ => walker.error(entry.span(), "subscription", "must be a table".to_string()),
            }
        }
    }
    check_within_file(&mut walker, &report.subscriptions);
    report.diagnostics = walker.diagnostics;
    sort_by_location(&mut report.diagnostics);
}

/// Every problem of a file in the order an editor shows them: by line, then column (stable: two
/// at one place keep the order they were found in).
fn sort_by_location(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|d| (d.line, d.column));
}

/// The known key nearest to a misspelt `name`, if one is close enough to be what was meant:
/// at most one edit in 4 characters (and at most 3), by Levenshtein distance, ignoring case.
pub fn did_you_mean<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let name = name.to_ascii_lowercase();
    let limit = (name.chars().count() / 4).clamp(1, 3);
    known
        .iter()
        .map(|k| (edit_distance(&name, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance between two short strings (keys), by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Walks the spanned document, collecting diagnostics.
struct Walker<'a> {
    path: &'a Path,
    text: &'a str,
    /// Where each line starts: every location lookup is a binary search, not a scan from the
    /// start of the file (which made big files quadratic).
    lines: LineIndex,
    diagnostics: Vec<Diagnostic>,
}

type Entry<'a, 'i> = Option<&'a Spanned<DeValue<'i>>>;

impl Walker<'_> {
    fn push(&mut self, severity: Severity, span: Range<usize>, field: &str, message: String) {
        let (line, column) = self.lines.line_column(self.text, span.start);
        self.diagnostics.push(Diagnostic {
            severity,
            path: self.path.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            message,
        });
    }

    fn error(&mut self, span: Range<usize>, field: &str, message: String) {
        self.push(Severity::Error, span, field, message);
    }

    fn warning(&mut self, span: Range<usize>, field: &str, message: String) {
        self.push(Severity::Warning, span, field, message);
    }

    /// Reports unknown keys of `table` and returns a lookup of the known ones.
    fn known_keys<'a, 'i>(
        &mut self,
        table: &'a DeTable<'i>,
        prefix: &str,
        known: &[&str],
    ) -> HashMap<&'a str, &'a Spanned<DeValue<'i>>> {
        let mut found = HashMap::new();
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                found.insert(name, value);
            } else {
                let hint = did_you_mean(name, known)
                    .map(|k| format!("did you mean `{k}`? "))
                    .unwrap_or_default();
                self.error(
                    key.span(),
                    &format!("{prefix}{name}"),
                    format!("unknown key; {hint}expected one of: {}", known.join(", ")),
                );
            }
        }
        found
    }

    fn string<'v>(
        &mut self,
        value: Entry<'v, '_>,
        field: &str,
        table_span: &Range<usize>,
    ) -> Option<(&'v str, Range<usize>)>
    where
        'v: 'v,
    {
        let Some(value) = value else {
            self.error(table_span.clone(), field, "missing (required)".to_string());
            return None;
        };
        match value.get_ref() {
            DeValue::String(text) => Some((text.as_ref(), value.span())),
            other => {
                self.error(
                    value.span(),
                    field,
                    format!("must be a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn optional_string<'v>(
        &mut self,
        value: Entry<'v, '_>,
        field: &str,
    ) -> Option<Option<(&'v str, Range<usize>)>> {
        match value {
            None => Some(None),
            Some(value) => match value.get_ref() {
                DeValue::String(text) => Some(Some((text.as_ref(), value.span()))),
                other => {
                    self.error(
                        value.span(),
                        field,
                        format!("must be a string, found {}", other.type_str()),
                    );
                    None
                }
            },
        }
    }

    fn money(
        &mut self,
        value: Entry<'_, '_>,
        field: &str,
        table_span: &Range<usize>,
        required: bool,
    ) -> Option<Option<Money>> {
        let Some(value) = value else {
            if required {
                self.error(table_span.clone(), field, "missing (required)".to_string());
                return None;
            }
            return Some(None);
        };
        match value.get_ref() {
            DeValue::String(text) => match Money::parse(text) {
                Ok(money) => Some(Some(money)),
                Err(e) => {
                    self.error(value.span(), field, format!("{e}, got {text:?}"));
                    None
                }
            },
            DeValue::Integer(_) | DeValue::Float(_) => {
                self.error(
                    value.span(),
                    field,
                    "must be a quoted string such as \"499.00\" (numbers are not exact)"
                        .to_string(),
                );
                None
            }
            other => {
                self.error(
                    value.span(),
                    field,
                    format!(
                        "must be a string such as \"499.00\", found {}",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    fn date(
        &mut self,
        value: Entry<'_, '_>,
        field: &str,
        table_span: &Range<usize>,
        required: bool,
    ) -> Option<Option<NaiveDate>> {
        let Some(value) = value else {
            if required {
                self.error(table_span.clone(), field, "missing (required)".to_string());
                return None;
            }
            return Some(None);
        };
        let usage = "must be a TOML date such as 2026-12-01 (no quotes, no time)";
        match value.get_ref() {
            DeValue::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => {
                let date = dt.date.and_then(|d| {
                    NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
                });
                match date {
                    Some(date) => Some(Some(date)),
                    None => {
                        self.error(value.span(), field, format!("{usage}, got {dt}"));
                        None
                    }
                }
            }
            DeValue::Datetime(dt) => {
                self.error(value.span(), field, format!("{usage}, got {dt}"));
                None
            }
            other => {
                self.error(
                    value.span(),
                    field,
                    format!("{usage}, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// One `[[subscription]]` table: every problem reported, `Some` only if there is none.
    fn subscription(&mut self, table: &DeTable<'_>, span: Range<usize>) -> Option<Subscription> {
        let errors_before = self.error_count();
        let keys = self.known_keys(
            table,
            "",
            &[
                "id",
                "customer",
                "bill_number",
                "currency",
                "amount",
                "every",
                "start",
                "state",
                "catch_up",
                "limits",
            ],
        );
        let get = |name: &str| keys.get(name).copied();

        let id =
            self.string(get("id"), "id", &span)
                .and_then(|(id, id_span)| {
                    let ok_chars = id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if id.is_empty() || id.len() > MAX_ID_LEN || !ok_chars {
                        self.error(
                    id_span,
                    "id",
                    format!("must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 _ -, got {id:?}"),
                );
                        return None;
                    }
                    Some(id.to_string())
                });
        let customer = self
            .optional_string(get("customer"), "customer")
            .and_then(|c| match c {
                None => Some(None),
                Some((text, text_span)) => {
                    if text.is_empty()
                        || text.len() > 64
                        || text.chars().any(|c| c.is_control() || c.is_whitespace())
                    {
                        self.error(
                            text_span,
                            "customer",
                            format!("must be 1 to 64 characters without spaces, got {text:?}"),
                        );
                        None
                    } else {
                        Some(Some(text.to_string()))
                    }
                }
            });
        let bill_number = self.string(get("bill_number"), "bill_number", &span).and_then(|(text, text_span)| {
            let (base, extension) = text.split_once('.').unwrap_or((text, ""));
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            let ok = digits(base) && (8..=20).contains(&base.len()) && (extension.is_empty() || digits(extension));
            if !ok {
                self.error(
                    text_span,
                    "bill_number",
                    format!("must be Assist's billnumber of the initial payment (digits, e.g. \"5899110210668265\"), got {text:?}"),
                );
                return None;
            }
            Some(text.to_string())
        });
        let currency =
            self.string(get("currency"), "currency", &span)
                .and_then(|(text, text_span)| {
                    Currency::parse(text)
                        .map_err(|e| self.error(text_span, "currency", e.to_string()))
                        .ok()
                });
        let amount = self.money(get("amount"), "amount", &span, true).flatten();
        let every = self
            .string(get("every"), "every", &span)
            .and_then(|(text, text_span)| {
                Cadence::parse(text)
                    .map_err(|e| self.error(text_span, "every", e))
                    .ok()
            });
        let start = self.date(get("start"), "start", &span, true).flatten();
        let state = self
            .optional_string(get("state"), "state")
            .and_then(|s| match s {
                None => Some(SubscriptionState::Active),
                Some((text, text_span)) => SubscriptionState::parse(text).or_else(|| {
                    self.error(
                        text_span,
                        "state",
                        format!("must be \"active\", \"paused\" or \"cancelled\", got {text:?}"),
                    );
                    None
                }),
            });
        let catch_up = self
            .optional_string(get("catch_up"), "catch_up")
            .and_then(|s| match s {
                None => Some(None),
                Some((text, text_span)) => match CatchUp::parse(text) {
                    Some(c) => Some(Some(c)),
                    None => {
                        self.error(
                            text_span,
                            "catch_up",
                            format!("must be \"latest\" or \"none\", got {text:?}"),
                        );
                        None
                    }
                },
            });
        let limits = self.limits(get("limits"));

        let (
            Some(id),
            Some(customer),
            Some(bill_number),
            Some(currency),
            Some(amount),
            Some(every),
            Some(start),
            Some(state),
            Some(catch_up),
            Some(limits),
        ) = (
            id,
            customer,
            bill_number,
            currency,
            amount,
            every,
            start,
            state,
            catch_up,
            limits,
        )
        else {
            return None;
        };
        let terms = Terms {
            amount,
            every,
            start,
            state,
            catch_up,
            limits,
        };

        let field_span = |name: &str| get(name).map_or(span.clone(), |v| v.span());
        let limit_span = |name: &str| {
            get("limits")
                .and_then(|l| match l.get_ref() {
                    DeValue::Table(t) => t
                        .iter()
                        .find(|(k, _)| k.get_ref() == name)
                        .map(|(_, v)| v.span()),
                    _ => None,
                })
                .unwrap_or_else(|| field_span("limits"))
        };
        for problem in billing::check_terms(&terms) {
            let at = match problem.field.strip_prefix("limits.") {
                Some(limit) => limit_span(limit),
                None => field_span(problem.field),
            };
            self.error(
                at,
                problem.field,
                format!("{} (subscription {id})", problem.message),
            );
        }
        let missing: Vec<&str> = [
            ("min_amount", limits.min_amount.is_none()),
            ("max_amount", limits.max_amount.is_none()),
            ("period_days", limits.period_days.is_none()),
            ("max_date", limits.max_date.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
        if !missing.is_empty() {
            self.warning(
                field_span("limits"),
                "limits",
                format!(
                    "subscription {id} has no {}: recurrentd enforces only the limits written here, \
                     so copy every limit of the initial payment",
                    missing.join(", ")
                ),
            );
        }
        if self.error_count() > errors_before {
            return None;
        }
        let (line, _) = self.lines.line_column(self.text, span.start);
        Some(Subscription {
            id,
            customer,
            bill_number,
            currency,
            terms,
            origin: Origin {
                path: self.path.to_path_buf(),
                line,
            },
        })
    }

    fn limits(&mut self, value: Entry<'_, '_>) -> Option<Limits> {
        let Some(value) = value else {
            return Some(Limits::default());
        };
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                value.span(),
                "limits",
                "must be a table: [subscription.limits]".to_string(),
            );
            return None;
        };
        let table_span = value.span();
        let keys = self.known_keys(
            table,
            "limits.",
            &["min_amount", "max_amount", "period_days", "max_date"],
        );
        let get = |name: &str| keys.get(name).copied();
        let min_amount = self.money(get("min_amount"), "limits.min_amount", &table_span, false);
        let max_amount = self.money(get("max_amount"), "limits.max_amount", &table_span, false);
        let max_date = self.date(get("max_date"), "limits.max_date", &table_span, false);
        let period_days = match get("period_days") {
            None => Some(None),
            Some(value) => match value.get_ref() {
                DeValue::Integer(int) => match i64::from_str_radix(int.as_str(), int.radix()) {
                    Ok(days @ 1..=999) => Some(Some(days as u32)),
                    _ => {
                        self.error(
                            value.span(),
                            "limits.period_days",
                            format!(
                                "must be a whole number of days, 1 to 999, got {}",
                                int.as_str()
                            ),
                        );
                        None
                    }
                },
                other => {
                    self.error(
                        value.span(),
                        "limits.period_days",
                        format!(
                            "must be a whole number of days, 1 to 999, found {}",
                            other.type_str()
                        ),
                    );
                    None
                }
            },
        };
        Some(Limits {
            min_amount: min_amount?,
            max_amount: max_amount?,
            period_days: period_days?,
            max_date: max_date?,
        })
    }

    fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}

/// Ids and bill numbers must be unique within a file too.
fn check_within_file(walker: &mut Walker<'_>, subscriptions: &[Subscription]) {
    let mut seen_ids: HashMap<&str, usize> = HashMap::new();
    let mut seen_bills: HashMap<&str, (&str, usize)> = HashMap::new();
    for sub in subscriptions {
        let at = walker.lines.line_start(walker.text, sub.origin.line);
        if let Some(line) = seen_ids.insert(&sub.id, sub.origin.line) {
            walker.error(
                at..at,
                "id",
                format!("{:?} is also defined at line {line} of this file", sub.id),
            );
        }
        if let Some((other, line)) = seen_bills.insert(&sub.bill_number, (&sub.id, sub.origin.line))
        {
            walker.error(
                at..at,
                "bill_number",
                format!(
                    "{} is also the agreement of subscription {other} (line {line}); one initial payment is one subscription",
                    sub.bill_number
                ),
            );
        }
    }
}

fn check_across_files(report: &mut DirReport) {
    let mut ids: HashMap<String, Origin> = HashMap::new();
    let mut bills: HashMap<String, (String, Origin)> = HashMap::new();
    for file in &mut report.files {
        if file.has_errors() {
            continue;
        }
        let mut clashes = Vec::new();
        for sub in &file.subscriptions {
            match ids.get(&sub.id) {
                Some(first) if first.path != sub.origin.path => clashes.push(Diagnostic {
                    severity: Severity::Error,
                    path: file.path.clone(),
                    line: sub.origin.line,
                    column: 1,
                    field: "id".to_string(),
                    message: format!(
                        "{:?} is already defined at {first}; ids are unique across files",
                        sub.id
                    ),
                }),
                _ => {}
            }
            match bills.get(&sub.bill_number) {
                Some((other, first)) if first.path != sub.origin.path => clashes.push(Diagnostic {
                    severity: Severity::Error,
                    path: file.path.clone(),
                    line: sub.origin.line,
                    column: 1,
                    field: "bill_number".to_string(),
                    message: format!(
                        "{} is already the agreement of subscription {other} at {first}; one initial payment is one subscription",
                        sub.bill_number
                    ),
                }),
                _ => {}
            }
        }
        if clashes.is_empty() {
            for sub in &file.subscriptions {
                ids.entry(sub.id.clone())
                    .or_insert_with(|| sub.origin.clone());
                bills
                    .entry(sub.bill_number.clone())
                    .or_insert_with(|| (sub.id.clone(), sub.origin.clone()));
            }
        }
        file.diagnostics.extend(clashes);
    }
}

/// 1-based line and column (in characters) of a byte offset.
/// Byte offsets at which the lines of a text start.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex(starts)
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_column(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(text.len());
        let line = self.0.partition_point(|&start| start <= offset).max(1);
        let start = self.0[line - 1];
        let column = text.get(start..offset).map_or(0, |s| s.chars().count()) + 1;
        (line, column)
    }

    /// Byte offset at which a 1-based line starts (the end of the text past the last line).
    fn line_start(&self, text: &str, line: usize) -> usize {
        self.0
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(text.len())
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_column(text, offset)
}

#[cfg(test)]
mod tests;
