//! `latchkey copy`: a live SQLite installation moved to PostgreSQL while it
//! serves, without the master key anywhere near the copy; the PostgreSQL
//! server then opens its secrets with the original key, keeps its tokens,
//! its events and their delivery ids. A used target and a missing source
//! are refused with a clear message.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sqlite_installation_moves_to_postgres_sealed_and_keeps_working() {
    let Some(schema) = pg_schema().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let http = client();
    let source = start(&src, &[]);
    let token = source
        .token
        .clone()
        .expect("first start prints the admin token");
    let billing = create(&http, &source.base, &token, &stripe("Billing"))
        .await
        .unwrap();
    create(&http, &source.base, &token, &stripe("Payouts"))
        .await
        .unwrap();
    assert!(deliver(&http, &source.base, &billing, "evt_before")
        .await
        .is_some());

    // The key is out of reach of the copy: it runs on sealed rows only.
    let key_file = src.join("master.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let from = format!("sqlite://{}", src.display());
    let url = postgres_url();
    let out = latchkey(&[
        "copy",
        "--from",
        &from,
        "--to",
        &url,
        "--to-schema",
        &schema.name,
    ]);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("credentials") && printed.contains(" 2 rows"),
        "{printed}"
    );
    assert!(printed.contains("sealed with master key kek_"), "{printed}");
    assert!(!printed.contains(key.trim()));
    std::fs::write(&key_file, &key).unwrap();

    // A replica on PostgreSQL with the source's key: same tokens, secrets,
    // events and delivery ids.
    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("master.key"), &key).unwrap();
    let target = start(
        &dst,
        &["--database-url", &url, "--database-schema", &schema.name],
    );
    assert!(
        target.token.is_none(),
        "the copied tenant is there: no new token"
    );
    let (status, list) = get_json(&http, &format!("{}/v1/credentials", target.base), &token).await;
    assert_eq!(status, 200, "{list}");
    let mut names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["Billing", "Payouts"]);
    // The webhook secret opens with the original key: deliveries verify.
    assert!(deliver(&http, &target.base, &billing, "evt_after")
        .await
        .is_some());
    assert!(
        deliver(&http, &target.base, &billing, "evt_before")
            .await
            .is_none(),
        "a delivery id seen before the copy is a duplicate after it"
    );
    let events = format!("{}/v1/events?credential_id={billing}", target.base);
    let (_, events) = get_json(&http, &events, &token).await;
    assert_eq!(events["items"].as_array().unwrap().len(), 2, "{events}");

    // Copying into a database that has data is refused, and changes nothing.
    let out = latchkey(&[
        "copy",
        "--from",
        &from,
        "--to",
        &url,
        "--to-schema",
        &schema.name,
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    let (_, list) = get_json(&http, &format!("{}/v1/credentials", target.base), &token).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // A source that is not there is named, not created.
    let missing = format!("sqlite://{}", dir.path().join("nowhere").display());
    let elsewhere = format!("sqlite://{}", dir.path().join("x.db").display());
    let out = latchkey(&["copy", "--from", &missing, "--to", &elsewhere]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no Latchkey database at"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("nowhere").exists());
    let out = latchkey(&["copy", "--from", "mysql://x", "--to", &from]);
    assert!(text(&out).contains("not a database URL"), "{}", text(&out));

    drop((source, target));
    schema.drop_schema().await;
}
