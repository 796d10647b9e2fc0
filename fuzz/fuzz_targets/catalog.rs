//! The catalog loader (`domain::Catalog::from_files`) on arbitrary TOML text.
//! Byte 0 picks how the text is offered, the rest is the file:
//!   0: as an integration file named after its own `id` (so the id check
//!      passes and every integration rule is reached), beside the built-in
//!      `services/generic.toml` that integrations' defaults name;
//!   1: as a services file, beside the same;
//!   2: as `integrations/fuzz.toml`, alone.
//! A catalog that loads is then read through its accessors, field patterns
//! included.
#![no_main]

use domain::{AuthType, Catalog, ServiceRole};
use libfuzzer_sys::fuzz_target;

const GENERIC: &str = include_str!("../../catalog/services/generic.toml");

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let text: &str = &text;
    let path = match selector % 3 {
        0 => {
            let id = toml::from_str::<toml::Table>(text)
                .ok()
                .and_then(|t| t.get("id").and_then(|v| v.as_str()).map(str::to_string))
                .unwrap_or_else(|| "fuzz".into());
            format!("integrations/{id}.toml")
        }
        1 => "services/fuzz.toml".to_string(),
        _ => "integrations/fuzz.toml".to_string(),
    };
    let files: Vec<(&str, &str)> = if selector % 3 == 2 {
        vec![(path.as_str(), text)]
    } else {
        vec![("services/generic.toml", GENERIC), (path.as_str(), text)]
    };
    let Ok(catalog) = Catalog::from_files(files) else {
        return;
    };
    for integration in catalog.integrations() {
        let _ = integration.fields_schema(AuthType::ApiKey);
        for field in integration.fields(AuthType::ApiKey) {
            if let Some(re) = catalog.pattern(&integration.id, &field.name) {
                let _ = re.is_match(&field.label);
            }
        }
        for role in ServiceRole::ALL {
            let id = integration.defaults.get(role);
            let service = catalog.service(id).expect("defaults were checked");
            assert_eq!(service.role, role);
            assert!(service.fits(&integration.id));
        }
        let _ = catalog.services(Some(&integration.id), None).count();
        let _ = catalog.integrations_matching(&integration.name.to_lowercase());
    }
});
