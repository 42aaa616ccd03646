use super::*;

/// A filter in prefix form, to compare parse trees in one line each.
fn show(e: &FilterExpr) -> String {
    let list =
        |kw: &str, terms: &[FilterExpr]| format!("({kw} {})", terms.iter().map(show).collect::<Vec<_>>().join(" "));
    match e {
        FilterExpr::And(terms) => list("AND", terms),
        FilterExpr::Or(terms) => list("OR", terms),
        FilterExpr::Not(e) => format!("(NOT {})", show(e)),
        FilterExpr::Compare(c) => {
            let v = match &c.value {
                Value::Status(s) => s.as_str().to_uppercase(),
                Value::Text(t) => format!("{t:?}"),
                Value::Type(TypePattern::Exact(t)) => format!("{t:?}"),
                Value::Type(TypePattern::Prefix(p)) => format!("{p}*"),
                Value::Type(TypePattern::Any) => "*".into(),
                Value::Id(id) => id.to_string(),
                Value::Int(n) => n.to_string(),
                Value::Time(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            };
            format!("({} {} {v})", c.op.as_str(), c.field.name())
        }
    }
}

fn parsed(src: &str) -> String {
    match FilterExpr::parse(src) {
        Ok(Some(e)) => show(&e),
        Ok(None) => "everything".into(),
        Err(e) => panic!("{src:?} should parse: {e}"),
    }
}

const ID: &str = "5f0c3a4e-9d1b-4c6e-8a2f-1b2c3d4e5f60";

#[test]
fn valid_filters_parse_to_these_trees() {
    let id = ID;
    let cases: Vec<(String, String)> = vec![
        ("".into(), "everything".into()),
        ("   ".into(), "everything".into()),
        ("execution_status = FAILED".into(), "(= execution_status FAILED)".into()),
        ("execution_status=EXECUTION_STATUS_HELD".into(), "(= execution_status HELD)".into()),
        ("executionStatus != succeeded".into(), "(!= execution_status SUCCEEDED)".into()),
        ("execution_status = \"PENDING\"".into(), "(= execution_status PENDING)".into()),
        (
            "execution_status = FAILED AND error_category = \"timeout\" AND create_time > \"2026-11-20T00:00:00Z\""
                .into(),
            "(AND (= execution_status FAILED) (= error_category \"timeout\") (> create_time 2026-11-20T00:00:00Z))"
                .into(),
        ),
        // AND binds tighter than OR.
        (
            "call_id = 1 OR call_id = 2 AND http_status_code >= 500".into(),
            "(OR (= call_id 1) (AND (= call_id 2) (>= http_status_code 500)))".into(),
        ),
        (
            "(call_id = 1 OR call_id = 2) AND http_status_code >= 500".into(),
            "(AND (OR (= call_id 1) (= call_id 2)) (>= http_status_code 500))".into(),
        ),
        // Nested ANDs and ORs are flattened.
        (
            "(call_id = 1 AND call_id < 9) AND call_id > 0".into(),
            "(AND (= call_id 1) (< call_id 9) (> call_id 0))".into(),
        ),
        ("call_id = 1 OR (call_id = 2 OR call_id = 3)".into(), "(OR (= call_id 1) (= call_id 2) (= call_id 3))".into()),
        ("NOT call_id = 5".into(), "(NOT (= call_id 5))".into()),
        ("-call_id = 5".into(), "(NOT (= call_id 5))".into()),
        ("-(call_id = 5 OR callId = 6)".into(), "(NOT (OR (= call_id 5) (= call_id 6)))".into()),
        ("NOT NOT call_id = 5".into(), "(= call_id 5)".into()),
        ("NOT(call_id=5)".into(), "(NOT (= call_id 5))".into()),
        ("call_id = -5".into(), "(= call_id -5)".into()),
        ("http_status_code <= 299".into(), "(<= http_status_code 299)".into()),
        ("webhook_type = \"call.*\"".into(), "(= webhook_type call.*)".into()),
        ("webhookType = \"*\"".into(), "(= webhook_type *)".into()),
        ("webhook_type != call_ended".into(), "(!= webhook_type \"call_ended\")".into()),
        ("webhook_type = 'call.started'".into(), "(= webhook_type \"call.started\")".into()),
        (format!("endpoint_id = {id}"), format!("(= endpoint_id {id})")),
        (format!("subscriptionId = \"{id}\""), format!("(= subscription_id {id})")),
        (format!("workspace_id != '{id}'"), format!("(!= workspace_id {id})")),
        // Times: any offset, held as UTC to the microsecond.
        ("create_time >= 2026-11-20T01:00:00+01:00".into(), "(>= create_time 2026-11-20T00:00:00Z)".into()),
        (
            "create_time < \"2026-11-20T00:00:00.123456789Z\"".into(),
            "(< create_time 2026-11-20T00:00:00.123456Z)".into(),
        ),
        ("\tcall_id\n=\r\n7  ".into(), "(= call_id 7)".into()),
    ];
    for (src, tree) in cases {
        assert_eq!(parsed(&src), tree, "{src:?}");
    }
}

#[test]
fn strings_take_escapes() {
    // The values a filter can compare have no quotes or backslashes, so an
    // escape shows in what the error quotes back.
    let e = FilterExpr::parse(r#"error_category = "a\"b\\c\n""#).unwrap_err();
    assert_eq!(e.position, 17);
    assert!(e.message.contains(r#""a\"b\\c\n" is not a failure category"#), "{e}");
    let e = FilterExpr::parse(r#"error_category = 'it\'s'"#).unwrap_err();
    assert!(e.message.contains(r#""it's" is not"#), "{e}");
}

#[test]
fn invalid_filters_name_the_position() {
    let cases: &[(&str, usize, &str)] = &[
        ("execution_status =", 18, "expected a value after '='"),
        ("execution_status = ", 19, "expected a value after '='"),
        ("execution_status = AND call_id = 1", 19, "expected a value after '='"),
        ("execution_status FAILED", 17, "expected one of = != < <= > >= after 'execution_status'"),
        ("execution_status : FAILED", 17, "':' (has) is not supported"),
        ("execution_status > FAILED", 17, "'execution_status' takes only = and !="),
        ("webhook_type < \"a\"", 13, "'webhook_type' takes only = and !="),
        ("execution_status = LOST", 19, "\"LOST\" is not a status"),
        ("status = FAILED", 0, "unknown field 'status'"),
        ("call_id = 1 AND payload.foo = 2", 16, "unknown field 'payload.foo'"),
        ("call_id = 1 and call_id = 2", 12, "expected AND, OR or the end of the filter, found 'and'"),
        ("call_id = x1", 10, "call_id: \"x1\" is not an integer"),
        ("http_status_code = 99999999999999999999", 19, "is not an integer"),
        ("endpoint_id = 42", 14, "\"42\" is not a UUID"),
        ("create_time > \"2026-11-20\"", 14, "is not an RFC 3339 time"),
        ("create_time > \"0000-01-01T00:00:00Z\"", 14, "between years 1 and 9999"),
        ("error_category = \"time out\"", 17, "is not a failure category"),
        ("webhook_type = \"call*\"", 15, "is not a webhook type"),
        ("webhook_type = \".*\"", 15, "is not a webhook type"),
        ("webhook_type = \"a\\qb\"", 17, "unknown escape"),
        ("webhook_type = \"call", 15, "string not closed"),
        ("(call_id = 1", 12, "expected ')' to close the '(' at 0, found the end of the filter"),
        ("call_id = 1)", 11, "')' without a matching '('"),
        ("call_id = 1 OR", 14, "expected a field name, '(' or NOT, found the end of the filter"),
        ("AND call_id = 1", 0, "expected a field name, '(' or NOT, found 'AND'"),
        ("NOT", 3, "expected a field name"),
        ("()", 1, "expected a field name, '(' or NOT, found ')'"),
        ("= 5", 0, "expected a field name, '(' or NOT, found '='"),
        ("call_id = 1 call_id = 2", 12, "expected AND, OR or the end of the filter, found 'call_id'"),
        ("call_id = \"1\"\"2\"", 13, "expected AND, OR or the end of the filter, found '\"'"),
    ];
    for (src, position, message) in cases {
        let err = FilterExpr::parse(src).expect_err(src);
        assert_eq!(err.position, *position, "{src:?}: {err}");
        assert!(err.message.contains(message), "{src:?}: {err} should say {message:?}");
        assert!(err.to_string().starts_with(&format!("at {position}: ")), "{err}");
    }
}

#[test]
fn filters_are_bounded_in_length_depth_and_terms() {
    let long = format!("webhook_type = \"{}\"", "a".repeat(MAX_FILTER_LEN));
    assert_eq!(FilterExpr::parse(&long).unwrap_err().position, MAX_FILTER_LEN);

    let nested = |n: usize| format!("{}call_id = 1{}", "(".repeat(n), ")".repeat(n));
    assert!(FilterExpr::parse(&nested(MAX_FILTER_DEPTH)).is_ok());
    let err = FilterExpr::parse(&nested(MAX_FILTER_DEPTH + 1)).unwrap_err();
    assert_eq!(err.position, MAX_FILTER_DEPTH);
    assert!(err.message.contains("nested more than"), "{err}");
    let nots = format!("{}call_id = 1", "NOT ".repeat(MAX_FILTER_DEPTH + 1));
    assert_eq!(FilterExpr::parse(&nots).unwrap_err().position, 4 * MAX_FILTER_DEPTH);

    let terms = |n: usize| vec!["call_id = 1"; n].join(" OR ");
    assert!(FilterExpr::parse(&terms(MAX_FILTER_TERMS)).is_ok());
    let err = FilterExpr::parse(&terms(MAX_FILTER_TERMS + 1)).unwrap_err();
    assert_eq!(err.position, MAX_FILTER_TERMS * "call_id = 1 OR ".len());
    assert!(err.message.contains("more than 32 comparisons"), "{err}");
}

fn log() -> LogRecord {
    LogRecord {
        log_id: 1,
        request_id: Uuid::nil(),
        message_id: Uuid::nil(),
        organization_id: Uuid::nil(),
        workspace_id: None,
        subscription_id: None,
        call_id: Some(5),
        assistant_id: None,
        webhook_url: "http://127.0.0.1:9/h".into(),
        webhook_type: "call.ended".into(),
        body: "{}".into(),
        metadata: None,
        status: ExecutionStatus::Failed,
        attempt_count: 1,
        max_retries: 0,
        next_attempt_at: None,
        expires_at: None,
        endpoint_id: None,
        created_at: "2026-11-20T12:00:00Z".parse().unwrap(),
        updated_at: "2026-11-20T12:00:00Z".parse().unwrap(),
        last_attempt: Some(crate::domain::AttemptRecord {
            attempt_number: 1,
            attempted_at: "2026-11-20T12:00:01Z".parse().unwrap(),
            success: false,
            status_code: Some(503),
            response_body: String::new(),
            response_truncated: false,
            response_time_ms: 3,
            error_category: Some("http_5xx".into()),
            error_message: None,
            manual: false,
        }),
    }
}

#[test]
fn expressions_evaluate_on_a_log() {
    let l = log();
    let cases = [
        ("execution_status = FAILED", true),
        ("execution_status = FAILED AND http_status_code >= 500", true),
        ("execution_status = SUCCEEDED OR execution_status = FAILED", true),
        ("NOT execution_status = FAILED", false),
        ("webhook_type = \"call.*\"", true),
        ("webhook_type = \"call\"", false),
        ("webhook_type != \"call.*\"", false),
        ("webhook_type = \"*\"", true),
        ("error_category = http_5xx", true),
        ("create_time >= \"2026-11-20T12:00:00Z\" AND create_time < \"2026-11-20T12:00:01Z\"", true),
        ("create_time > \"2026-11-20T12:00:00Z\"", false),
        ("create_time <= \"2026-11-20T12:00:00Z\"", true),
        ("call_id = 5 AND -(http_status_code < 500)", true),
        // A field the log lacks: only != holds.
        (&format!("endpoint_id = {ID}"), false),
        (&format!("endpoint_id != {ID}"), true),
        (&format!("NOT endpoint_id = {ID}"), true),
        (&format!("workspace_id != {ID} AND subscription_id != {ID}"), true),
    ];
    for (src, expected) in cases {
        let e = FilterExpr::parse(src).unwrap().unwrap();
        assert_eq!(e.matches(&l), expected, "{src}");
    }
    let unattempted = LogRecord { last_attempt: None, ..l };
    let e = |src| FilterExpr::parse(src).unwrap().unwrap();
    assert!(!e("http_status_code >= 0").matches(&unattempted));
    assert!(e("http_status_code != 200").matches(&unattempted));
    assert!(!e("error_category = timeout").matches(&unattempted));
}

#[test]
fn top_level_and_terms_move_into_the_indexed_fields() {
    let narrowed = |src: &str, base: LogFilter| {
        let mut f = base;
        f.narrow(FilterExpr::parse(src).unwrap().unwrap());
        f
    };
    let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();

    let f = narrowed(
        "execution_status = FAILED AND create_time > \"2026-11-20T00:00:00Z\" AND create_time <= \
         \"2026-11-21T00:00:00Z\" AND call_id = 5 AND http_status_code >= 500",
        LogFilter::default(),
    );
    assert_eq!(f.status, Some(ExecutionStatus::Failed));
    assert_eq!(f.created_after, Some(t("2026-11-20T00:00:00.000001Z")));
    assert_eq!(f.created_before, Some(t("2026-11-21T00:00:00.000001Z")));
    assert_eq!(f.call_id, Some(5));
    assert_eq!(f.expr.as_ref().map(show).as_deref(), Some("(>= http_status_code 500)"));

    // Everything moves: no extra predicate.
    let f = narrowed(
        &format!("endpoint_id = {ID} AND webhook_type = call.ended AND error_category = timeout"),
        LogFilter::default(),
    );
    assert_eq!(
        (f.endpoint_id.is_some(), f.webhook_type.as_deref(), f.error_category.as_deref()),
        (true, Some("call.ended"), Some("timeout"))
    );
    assert_eq!(f.expr, None);

    // A field already set (by the request's own field) keeps its value; the
    // term stays, so both must hold.
    let base = LogFilter { status: Some(ExecutionStatus::Succeeded), ..Default::default() };
    let f = narrowed("execution_status = FAILED", base);
    assert_eq!(f.status, Some(ExecutionStatus::Succeeded));
    assert_eq!(f.expr.as_ref().map(show).as_deref(), Some("(= execution_status FAILED)"));

    // Under OR or NOT nothing moves.
    let f = narrowed("execution_status = FAILED OR call_id = 5", LogFilter::default());
    assert_eq!((f.status, f.call_id), (None, None));
    let f = narrowed("NOT call_id = 5 AND webhook_type = \"call.*\"", LogFilter::default());
    assert_eq!(f.call_id, None);
    assert_eq!(f.expr.as_ref().map(show).as_deref(), Some("(AND (NOT (= call_id 5)) (= webhook_type call.*))"));
}
