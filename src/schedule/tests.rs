use super::*;
use proptest::prelude::*;

const GOOD: &str = r#"# A monthly plan.
[[subscription]]
id = "acme-1001"
customer = "1001"
bill_number = "5899110210668265"
currency = "RUB"
amount = "499.00"
every = "1 month"
start = 2026-12-01

[subscription.limits]
min_amount = "100.00"
max_amount = "1000.00"
period_days = 28
max_date = 2027-12-01

[[subscription]]
id = "acme-1002"
bill_number = "5899110210668266"
currency = "RUB"
amount = "99.00"
every = "1 week"
start = 2026-12-03
state = "paused"
catch_up = "none"
limits = { min_amount = "50.00", max_amount = "200.00", period_days = 7, max_date = 2027-06-01 }
"#;

fn parse(text: &str) -> FileReport {
    parse_text(Path::new("schedules/test.toml"), text)
}

/// The diagnostics as `line:column: field: message` without the path.
fn shown(report: &FileReport) -> Vec<String> {
    report
        .diagnostics
        .iter()
        .map(|d| {
            d.to_string()
                .trim_start_matches("schedules/test.toml:")
                .to_string()
        })
        .collect()
}

#[test]
fn a_good_file_gives_its_subscriptions() {
    let report = parse(GOOD);
    assert!(report.diagnostics.is_empty(), "{:?}", shown(&report));
    let [first, second] = &report.subscriptions[..] else {
        panic!("two subscriptions")
    };
    assert_eq!(first.id, "acme-1001");
    assert_eq!(first.customer.as_deref(), Some("1001"));
    assert_eq!(first.terms.amount.to_string(), "499.00");
    assert_eq!(first.terms.limits.period_days, Some(28));
    assert_eq!(first.origin.line, 2);
    assert_eq!(second.terms.state, SubscriptionState::Paused);
    assert_eq!(second.terms.catch_up, Some(CatchUp::None));
    assert_eq!(second.origin.line, 17);
}

#[test]
fn every_bad_value_gets_its_own_located_diagnostic() {
    let text = GOOD
        .replace("id = \"acme-1001\"", "id = \"acme 1001!\"")
        .replace(
            "currency = \"RUB\"\namount = \"499.00\"",
            "currency = \"rub\"\namount = 499.0",
        )
        .replace("every = \"1 month\"", "every = \"monthly\"")
        .replace(
            "start = 2026-12-01",
            "start = \"2026-12-01\"\ncolour = \"red\"",
        )
        .replace("period_days = 28", "period_days = 0")
        .replace("max_date = 2027-12-01", "max_date = 2027-12-01T10:00:00");
    let report = parse(&text);
    assert!(report.subscriptions.is_empty() || report.has_errors());
    assert_eq!(
        shown(&report),
        [
            "3:6: id: must be 1 to 40 characters of A-Z a-z 0-9 _ -, got \"acme 1001!\"",
            "6:12: currency: currency must be an ISO 4217 code of three capital letters such as RUB, got \"rub\"",
            "7:10: amount: must be a quoted string such as \"499.00\" (numbers are not exact)",
            "8:9: every: must be \"N day(s)\", \"N week(s)\", \"N month(s)\" or \"N year(s)\", such as \"1 month\", got \"monthly\"",
            "9:9: start: must be a TOML date such as 2026-12-01 (no quotes, no time), found string",
            "10:1: colour: unknown key; expected one of: id, customer, bill_number, currency, amount, every, start, state, catch_up, limits",
            "15:15: limits.period_days: must be a whole number of days, 1 to 999, got 0",
            "16:12: limits.max_date: must be a TOML date such as 2026-12-01 (no quotes, no time), got 2027-12-01T10:00:00",
        ]
    );
}

#[test]
fn bad_amounts_say_why() {
    for (amount, why) in [
        ("\"1e3\"", "character other than the digits"),
        ("\"-5.00\"", "character other than the digits"),
        ("\"10,00\"", "character other than the digits"),
        ("\"10.345\"", "more than two decimals"),
        ("\" 10.00\"", "character other than the digits"),
        ("\"0.00\"", "greater than zero"),
    ] {
        let report = parse(&GOOD.replace("amount = \"499.00\"", &format!("amount = {amount}")));
        let diagnostics = shown(&report);
        assert_eq!(diagnostics.len(), 1, "{amount}: {diagnostics:?}");
        assert!(
            diagnostics[0].starts_with("7:10: amount: ") && diagnostics[0].contains(why),
            "{diagnostics:?}"
        );
    }
}

#[test]
fn missing_required_keys_are_each_named() {
    let report = parse("[[subscription]]\nid = \"x\"\n");
    let fields: Vec<&str> = report
        .diagnostics
        .iter()
        .map(|d| d.field.as_str())
        .collect();
    assert_eq!(
        fields,
        ["bill_number", "currency", "amount", "every", "start"]
    );
    assert!(
        report
            .diagnostics
            .iter()
            .all(|d| d.message == "missing (required)")
    );
}

#[test]
fn terms_that_break_their_own_limits_are_errors() {
    let text = GOOD
        .replace("period_days = 28", "period_days = 30")
        .replace("amount = \"499.00\"", "amount = \"1499.00\"");
    let shown = shown(&parse(&text));
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!(
        shown[0],
        "7:10: amount: 1499.00 is above limits.max_amount 1000.00 (subscription acme-1001)"
    );
    assert!(
        shown[1].starts_with(
            "14:15: every: every = \"1 month\" gives a 28-day gap (2027-01-01 → 2027-02-01)"
        ) || shown[1].contains("28-day gap"),
        "{shown:?}"
    );
}

#[test]
fn missing_limits_are_warnings_not_errors() {
    let text = "[[subscription]]\nid = \"a\"\nbill_number = \"5899110210668265\"\ncurrency = \"RUB\"\namount = \"10.00\"\nevery = \"1 day\"\nstart = 2027-01-01\n";
    let report = parse(text);
    assert!(!report.has_errors());
    assert_eq!(report.subscriptions.len(), 1);
    assert_eq!(report.diagnostics.len(), 1);
    assert_eq!(report.diagnostics[0].severity, Severity::Warning);
    assert!(
        report.diagnostics[0]
            .message
            .contains("min_amount, max_amount, period_days, max_date")
    );
}

#[test]
fn toml_syntax_errors_are_located() {
    let report = parse("[[subscription]]\nid = \"a\nbill_number = 5\n");
    assert!(report.has_errors());
    assert!(report.subscriptions.is_empty());
    let first = &report.diagnostics[0];
    assert_eq!((first.line, first.field.as_str()), (2, "toml"), "{first}");
}

#[test]
fn duplicates_within_a_file() {
    let text = format!(
        "{GOOD}\n{}",
        &GOOD[GOOD.find("[[subscription]]\nid = \"acme-1002\"").unwrap()..]
    );
    let report = parse(&text);
    let shown = shown(&report);
    assert!(
        shown
            .iter()
            .any(|s| s.contains("id: \"acme-1002\" is also defined at line 17")),
        "{shown:?}"
    );
    assert!(
        shown.iter().any(|s| s.contains(
            "bill_number: 5899110210668266 is also the agreement of subscription acme-1002"
        )),
        "{shown:?}"
    );
}

#[test]
fn unknown_top_level_keys_and_shapes() {
    let report = parse("title = \"x\"\nsubscription = 5\n");
    assert_eq!(
        shown(&report),
        [
            "1:1: title: unknown key; a schedule file holds only [[subscription]] tables",
            "2:16: subscription: must be written as [[subscription]] tables"
        ]
    );
}

mod folder {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_only_toml_files_and_refuses_links_and_large_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("schedules");
        std::fs::create_dir(&dir).unwrap();
        write(&dir, "a.toml", GOOD);
        write(&dir, "notes.txt", "not a schedule");
        write(root.path(), "outside.toml", GOOD);
        symlink(root.path().join("outside.toml"), dir.join("link.toml")).unwrap();
        let big = format!("# {}\n", "x".repeat(MAX_FILE_BYTES as usize));
        write(&dir, "big.toml", &big);
        std::fs::write(dir.join("latin1.toml"), b"# caf\xe9\n[[subscription]]\n").unwrap();
        symlink(dir.join("gone.toml"), dir.join(".#a.toml")).unwrap();

        let report = load_dir(&dir).unwrap();
        let names: Vec<String> = report
            .files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into())
            .collect();
        assert_eq!(names, ["a.toml", "big.toml", "latin1.toml", "link.toml"]);
        assert_eq!(report.subscriptions().count(), 2);
        let messages: Vec<String> = report.diagnostics().map(|d| d.to_string()).collect();
        assert!(
            messages[0]
                .contains("big.toml:1:1: file: is 1048579 bytes, over the 1048576-byte limit"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("latin1.toml:1:1: file: invalid UTF-8 at line 1, column 6"),
            "{messages:?}"
        );
        assert!(
            messages[2].contains("link.toml:1:1: file: is a symbolic link; refused"),
            "{messages:?}"
        );
        assert_eq!(report.error_count(), 3);
    }

    #[test]
    fn clashes_across_files_name_both_and_reject_the_later_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        write(dir, "a.toml", GOOD);
        let other = GOOD
            .replace("acme-1002", "acme-2002")
            .replace("5899110210668266", "5899110210668299");
        write(dir, "b.toml", &other);
        let report = load_dir(dir).unwrap();
        assert!(!report.files[0].has_errors());
        assert!(report.files[1].has_errors());
        let message = report.files[1].diagnostics[0].to_string();
        assert!(
            message.contains("b.toml:2:1: id: \"acme-1001\" is already defined at"),
            "{message}"
        );
        assert!(message.contains("a.toml:2"), "{message}");
        // Only the first file's subscriptions are in force.
        assert_eq!(report.subscriptions().count(), 2);
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let error = load_dir(&root.path().join("nope")).unwrap_err().to_string();
        assert!(
            error.contains("nope") && error.contains("cannot open"),
            "{error}"
        );
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn arbitrary_edits_of_a_good_file_never_panic(cut in 0usize..GOOD.len(), insert in "[\\[\\]=\"a-z0-9 .\n-]{0,8}") {
        let mut text = GOOD.to_string();
        let cut = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(cut, &insert);
        let report = parse(&text);
        for d in &report.diagnostics {
            prop_assert!(d.line >= 1 && d.column >= 1);
        }
    }
}

/// The line index finds the same line and column as scanning the text from its start.
#[test]
fn line_index_agrees_with_a_scan() {
    fn scan(text: &str, offset: usize) -> (usize, usize) {
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[start..].chars().count() + 1)
    }
    for text in [
        "",
        "a",
        "\n",
        "ab\ncd\n",
        "é\nñé\n\nx",
        "[[subscription]]\nid = \"x\"\n",
    ] {
        let index = super::LineIndex::new(text);
        for offset in (0..=text.len()).filter(|o| text.is_char_boundary(*o)) {
            assert_eq!(
                index.line_column(text, offset),
                scan(text, offset),
                "{text:?} at {offset}"
            );
        }
        let lines = text.matches('\n').count() + 1;
        for line in 1..=lines {
            let start = index.line_start(text, line);
            assert_eq!(scan(text, start), (line, 1), "{text:?} line {line}");
        }
    }
}

#[test]
fn a_misspelt_key_is_answered_with_the_nearest_known_one() {
    let text = GOOD
        .replace("amount = \"499.00\"", "amout = \"499.00\"")
        .replace("period_days = 28", "period_dyas = 28")
        .replace(
            "currency = \"RUB\"\namount = \"99.00\"",
            "currency = \"RUB\"\nwibble = 1\namount = \"99.00\"",
        );
    let report = parse(&text);
    let shown = shown(&report);
    assert!(
        shown
            .iter()
            .any(|d| d.contains("amout: unknown key; did you mean `amount`?")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|d| d.contains("limits.period_dyas: unknown key; did you mean `period_days`?")),
        "{shown:#?}"
    );
    // Nothing near: no guess.
    let wibble = shown.iter().find(|d| d.contains("wibble")).unwrap();
    assert!(!wibble.contains("did you mean"), "{wibble}");
    assert_eq!(
        did_you_mean("subscriptions", &["subscription"]),
        Some("subscription")
    );
    assert_eq!(did_you_mean("ID", &["id", "customer"]), Some("id"));
    assert_eq!(
        did_you_mean("idd", &["id"]),
        Some("id"),
        "one edit in a short key"
    );
    assert_eq!(did_you_mean("x", &["id"]), None);
    assert_eq!(did_you_mean("colour", &["id", "customer", "state"]), None);
}

#[test]
fn every_problem_of_a_file_is_reported_sorted_by_line() {
    // Problems found by the walk and by the checks across the file (a duplicate id, found
    // after both subscriptions were read) come out in line order.
    let text = "[[subscription]]\nid = \"a\"\nbill_number = \"1\"\ncurrency = \"RUB\"\n\
        amount = \"10.00\"\nevery = \"1 month\"\nstart = 2027-01-01\n\n\
        [[subscription]]\nid = \"a\"\nbill_number = \"2\"\ncurrency = \"XXX\"\n\
        amount = \"1.234\"\nevery = \"1 month\"\nstart = 2027-01-01\n";
    let report = parse(text);
    let lines: Vec<usize> = report.diagnostics.iter().map(|d| d.line).collect();
    assert!(report.diagnostics.len() >= 3, "{:#?}", shown(&report));
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "{:#?}", shown(&report));
}
