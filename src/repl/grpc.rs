//! gRPC at the REPL: `Method [json]` becomes a request of the target daemon and its reply JSON.
//!
//! Nothing here names a message or a field: build.rs generates the JSON mapping (pbjson) and the
//! method table from the proto, so what is added there reaches the REPL with no edit here. The
//! mapping is the proto3 JSON mapping, as grpcurl and other gRPC tools speak it, with field names
//! as in the proto, every field printed and enums by name. It accepts numbers for enums, the
//! lowerCamelCase field names and 64-bit integers as strings or numbers; it prints 64-bit
//! integers as strings, as the mapping says. Unknown fields and wrong types are errors that name
//! the field, so a typo is not silently dropped.

use anyhow::{anyhow, bail, Context, Result};
use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::parse::split_word;
use crate::target::client::TargetClient;
use crate::timeouts;

/// The serde impls pbjson generated; they name the message types unqualified.
mod serde_impls {
    use crate::target::proto::*;
    include!(concat!(env!("OUT_DIR"), "/vmcheck.target.v1.serde.rs"));
}

type Call = for<'a> fn(&'a mut TargetClient, Value) -> BoxFuture<'a, Result<Value>>;

/// One unary method of the target service.
pub struct Method {
    pub name: &'static str,
    /// Whether a JSON request is one of this method.
    check: fn(&Value) -> Result<()>,
    call: Call,
    /// The request and reply types, as written in the table.
    #[cfg(test)]
    types: [&'static str; 2],
}

impl Method {
    /// Calls the method with a request `check` accepted; the reply as JSON.
    pub async fn call(&self, client: &mut TargetClient, request: Value) -> Result<Value> {
        (self.call)(client, request).await
    }
}

/// `value` as message `T`; an error names the message and the field.
pub fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let name = message_name::<T>();
        match e.path().to_string().as_str() {
            "." => anyhow!("{name}: {}", e.inner()),
            path => anyhow!("{name}.{path}: {}", e.inner()),
        }
    })
}

fn message_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Expands build.rs's table (`repl_grpc.rs`): the methods, and for the tests every message with a
/// JSON sample in which every field is set.
macro_rules! grpc_table {
    (
        unary: [$(($name:literal, $method:ident, $request:ty, $reply:ty)),* $(,)?],
        streaming: [$($streaming:literal),* $(,)?],
        messages: [$(($message:ty, $sample:literal)),* $(,)?] $(,)?
    ) => {
        /// Every unary method of the target service, in the proto's order.
        pub static METHODS: &[Method] = &[$(Method {
            name: $name,
            check: |body| from_json::<$request>(body.clone()).map(drop),
            #[cfg(test)]
            types: [stringify!($request), stringify!($reply)],
            call: |client, body| {
                Box::pin(async move {
                    let mut request = tonic::Request::new(from_json::<$request>(body)?);
                    // The daemon learns the deadline too (grpc-timeout).
                    request.set_timeout(timeouts::request());
                    let reply: tonic::Response<$reply> = tokio::time::timeout(timeouts::request(), client.$method(request))
                        .await
                        .map_err(|_| anyhow!("{}: no reply within {:?}", $name, timeouts::request()))?
                        .map_err(|s| anyhow!("{}: {:?}: {}", $name, s.code(), s.message()))?;
                    Ok(serde_json::to_value(reply.into_inner())?)
                })
            },
        }),*];

        /// Streaming methods: the REPL calls unary ones only.
        static STREAMING: &[&str] = &[$($streaming),*];

        /// Runs `tests::round_trip` on every message of the proto; their names.
        #[cfg(test)]
        fn round_trip_every_message() -> Vec<&'static str> {
            vec![$(tests::round_trip::<$message>($sample)),*]
        }
    };
}

include!(concat!(env!("OUT_DIR"), "/repl_grpc.rs"));

/// The methods' names, for help and completion.
pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

/// `Method [json]`: the method (in any case) and its request, `{}` when none is given; the
/// request is checked here, before any connection is made.
pub fn request(text: &str) -> Result<(&'static Method, Value)> {
    let (name, body) = split_word(text);
    let Some(method) = METHODS.iter().find(|m| m.name.eq_ignore_ascii_case(name)) else {
        if let Some(s) = STREAMING.iter().find(|s| s.eq_ignore_ascii_case(name)) {
            bail!("{s} is a streaming method; the REPL calls these: {}", names().join(", "));
        }
        bail!("no gRPC method {name:?}; methods: {}", names().join(", "));
    };
    let body = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_str(body)
            .with_context(|| format!("the request of {} is not JSON", method.name))?
    };
    (method.check)(&body)?;
    Ok((method, body))
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::*;
    use crate::target::proto;

    /// `sample` (every field set) parses to a message other than the default, prints with every
    /// field of the sample at the same value, and parses back to the same message.
    pub(super) fn round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug + Default>(
        sample: &'static str,
    ) -> &'static str {
        let name = message_name::<T>();
        let sample: Value = serde_json::from_str(sample).unwrap();
        let message: T = from_json(sample.clone()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        if sample.as_object().is_some_and(|o| !o.is_empty()) {
            assert_ne!(message, T::default(), "{name}: {sample} parsed to the default");
        }
        let printed = serde_json::to_value(&message).unwrap();
        assert_contains(&printed, &sample, name);
        assert_eq!(
            from_json::<T>(printed.clone()).unwrap(),
            message,
            "{name}: {printed} did not parse back"
        );
        name
    }

    /// Every field of `want` is in `got` with the same value (`got` may have more: fields of
    /// a message the sample leaves out, such as a recursive one).
    fn assert_contains(got: &Value, want: &Value, at: &str) {
        match (got, want) {
            (Value::Object(g), Value::Object(w)) => {
                for (k, v) in w {
                    let g = g.get(k).unwrap_or_else(|| panic!("{at}: no field {k:?} in {got}"));
                    assert_contains(g, v, &format!("{at}.{k}"));
                }
            }
            (Value::Array(g), Value::Array(w)) if g.len() == w.len() => {
                for (i, (g, w)) in g.iter().zip(w).enumerate() {
                    assert_contains(g, w, &format!("{at}[{i}]"));
                }
            }
            _ => assert_eq!(got, want, "{at}"),
        }
    }

    #[test]
    fn every_message_of_the_proto_goes_through_json_with_every_field() {
        let names = round_trip_every_message();
        // So is every message the REPL sends or prints.
        for m in METHODS {
            for t in m.types {
                let t = t.rsplit("::").next().unwrap().trim();
                assert!(names.contains(&t), "{}: {t} is not in {names:?}", m.name);
            }
        }
        for want in [
            "HealthReply",
            "ShareBdevRequest",
            "ListSubsystemsReply",
            "Subsystem",
            "Namespace",
            "Port",
            "Bdev",
        ] {
            assert!(names.contains(&want), "{want} is not in {names:?}");
        }
    }

    #[test]
    fn requests_map_from_json() {
        let (method, body) = request(r#"ShareBdev {"name": "malloc:///m0?size_mb=8", "port": 4421, "allowed_hosts": ["nqn.h"]}"#).unwrap();
        assert_eq!(method.name, "ShareBdev");
        let r: proto::ShareBdevRequest = from_json(body).unwrap();
        assert_eq!(
            (r.name.as_str(), r.port, r.nqn, r.allowed_hosts),
            ("malloc:///m0?size_mb=8", Some(4421), None, vec!["nqn.h".to_string()])
        );
        let (method, body) = request("listbdevs").unwrap();
        assert_eq!((method.name, body), ("ListBdevs", json!({})));
        // Enums by name or number, field names as in the proto or in lowerCamelCase.
        for body in
            [json!({"protocol": "SHARE_PROTOCOL_NVMF"}), json!({"protocol": 1, "allowedHosts": []})]
        {
            assert_eq!(
                from_json::<proto::ShareBdevRequest>(body).unwrap().protocol(),
                proto::ShareProtocol::Nvmf
            );
        }
        let error = |text: &str| {
            format!("{:#}", request(text).err().unwrap_or_else(|| panic!("{text} was accepted")))
        };
        let e = error(r#"CreateBdev {"url": "x"}"#);
        assert!(e.contains("CreateBdevRequest.url: unknown field `url`, expected `uri`"), "{e}");
        let e = error(r#"ShareBdev {"port": "x"}"#);
        assert!(e.starts_with("ShareBdevRequest.port: "), "{e}");
        assert!(error(r#"ShareBdev {"port": -1}"#).starts_with("ShareBdevRequest.port: "));
        assert!(error(r#"ShareBdev {"allowed_hosts": "h"}"#)
            .starts_with("ShareBdevRequest.allowed_hosts: "));
        assert!(error("Frob {}").contains("methods: Health, ListBdevs"));
        assert!(error("Health {").contains("the request of Health is not JSON"));
    }

    #[test]
    fn replies_map_to_json() {
        let reply = proto::ListSubsystemsReply {
            subsystems: vec![proto::Subsystem {
                nqn: "nqn.x".into(),
                namespaces: vec![proto::Namespace { nsid: 1, ..Default::default() }],
                ..Default::default()
            }],
            hosts: vec!["h".into()],
            ..Default::default()
        };
        let v = serde_json::to_value(&reply).unwrap();
        assert_eq!(v["subsystems"][0]["nqn"], "nqn.x");
        assert_eq!(v["subsystems"][0]["namespaces"][0]["nsid"], 1);
        // Defaults are printed: `false` and empty are information at a prompt.
        assert_eq!(v["subsystems"][0]["allow_any_host"], false);
        assert_eq!(v["ports"], json!([]));
        assert_eq!(v["hosts"], json!(["h"]));
        assert_eq!(from_json::<proto::ListSubsystemsReply>(v).unwrap(), reply);
        let v = serde_json::to_value(proto::Bdev {
            num_blocks: 16384,
            blk_size: 512,
            ..Default::default()
        })
        .unwrap();
        assert_eq!((&v["num_blocks"], &v["blk_size"]), (&json!("16384"), &json!(512)));
    }
}
