//! The DNS side of the resolver: one hickory-server `ServerFuture` per address it is asked on
//! (UDP and TCP 53), each with a [`Handler`] that knows that address.
//!
//! Invariants: a query is answered only for a source that is a member of a network served on
//! the address it arrived on (REFUSED otherwise); `<name>` and `<name>.<domain>` are answered
//! from the network's records, other names inside the domain are NXDOMAIN, everything else is
//! forwarded (bounded, [`super::forward`]). Wire parsing and encoding are hickory's; nothing
//! here panics on input.

use super::forward::{ForwardError, Forwarder};
use super::table::{Net, Table};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

/// TTL of answers from records (records change with containers).
pub const TTL: u32 = 5;

/// What every handler shares: the current table, the forwarder, the Docker fallback.
pub struct Shared {
    pub table: RwLock<Arc<Table>>,
    pub forwarder: Forwarder,
    pub docker: super::docker::DockerAsk,
}

impl Shared {
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Clone)]
pub struct Handler {
    pub local: IpAddr,
    pub shared: Arc<Shared>,
}

/// What a query gets.
enum Answer {
    Records(Vec<Record>),
    Code(ResponseCode),
    /// A single label this network's records do not hold: Docker's DNS may (a container
    /// attached through the shim), else `then`.
    Miss {
        label: String,
        then: Box<Answer>,
    },
    Forward,
}

fn records(name: &Name, qtype: RecordType, addrs: &[IpAddr]) -> Vec<Record> {
    addrs
        .iter()
        .filter_map(|a| match (a, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|rd| Record::from_rdata(name.clone(), TTL, rd))
        .collect()
}

/// The answer from the records of `net`.
fn local_answer(net: &Net, name: &Name, qtype: RecordType) -> Answer {
    let qname = name.to_ascii().to_ascii_lowercase();
    match net.label_of(&qname) {
        None => Answer::Forward,
        Some(Err(())) => Answer::Code(ResponseCode::NXDomain),
        Some(Ok(label)) => match net.names.get(label) {
            Some(addrs) => Answer::Records(records(name, qtype, addrs)),
            // `<label>.<domain>`: ours alone, NXDOMAIN unless Docker holds it; a bare label
            // goes upstream unless Docker holds it.
            None => Answer::Miss {
                label: label.to_string(),
                then: Box::new(if qname.trim_end_matches('.').contains('.') {
                    Answer::Code(ResponseCode::NXDomain)
                } else {
                    Answer::Forward
                }),
            },
        },
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let header = request.header();
        let fail = |code: ResponseCode| -> ResponseInfo {
            let mut h = Header::response_from_request(header);
            h.set_response_code(code);
            h.into()
        };
        if header.message_type() != MessageType::Query {
            return fail(ResponseCode::FormErr);
        }
        if header.op_code() != OpCode::Query {
            let m = builder.error_msg(header, ResponseCode::NotImp);
            return response
                .send_response(m)
                .await
                .unwrap_or_else(|_| fail(ResponseCode::NotImp));
        }
        let info = match request.request_info() {
            Ok(i) => i,
            Err(_) => {
                let m = builder.error_msg(header, ResponseCode::FormErr);
                return response
                    .send_response(m)
                    .await
                    .unwrap_or_else(|_| fail(ResponseCode::FormErr));
            }
        };
        let table = self.shared.table();
        let Some(net) = table.net_for(self.local, info.src.ip()) else {
            let m = builder.error_msg(header, ResponseCode::Refused);
            return response
                .send_response(m)
                .await
                .unwrap_or_else(|_| fail(ResponseCode::Refused));
        };
        let name: Name = info.query.name().into();
        let qtype = info.query.query_type();
        let mut answer = local_answer(net, &name, qtype);
        if let Answer::Miss { label, then } = answer {
            answer = *then;
            if !net.docker_sandboxes.is_empty() {
                if let Some(addrs) = self.shared.docker.ask(&net.docker_sandboxes, &label).await {
                    answer = Answer::Records(records(&name, qtype, &addrs));
                }
            }
        }
        let mut h = Header::response_from_request(header);
        h.set_recursion_available(true);
        match answer {
            Answer::Records(rs) => {
                h.set_authoritative(true);
                let m = builder.build(h, rs.iter(), [], [], []);
                response.send_response(m).await.unwrap_or_else(|_| h.into())
            }
            // A miss was resolved above: never here, but NXDOMAIN would be its answer.
            Answer::Code(_) | Answer::Miss { .. } => {
                let code = match answer {
                    Answer::Code(c) => c,
                    _ => ResponseCode::NXDomain,
                };
                h.set_authoritative(true);
                h.set_response_code(code);
                let m = builder.build_no_records(h);
                response.send_response(m).await.unwrap_or_else(|_| h.into())
            }
            Answer::Forward => {
                drop(table);
                let got = self
                    .shared
                    .forwarder
                    .forward(
                        name,
                        qtype,
                        info.query.query_class(),
                        header.checking_disabled(),
                    )
                    .await;
                match got {
                    Ok(up) => {
                        h.set_response_code(up.response_code());
                        h.set_truncated(up.truncated());
                        h.set_authentic_data(up.authentic_data());
                        let m = builder.build(
                            h,
                            up.answers().iter(),
                            up.name_servers().iter(),
                            [],
                            up.additionals().iter(),
                        );
                        response.send_response(m).await.unwrap_or_else(|_| h.into())
                    }
                    Err(e) => {
                        if e == ForwardError::Busy {
                            tracing::debug!(
                                "forward: {} in flight, SERVFAIL",
                                super::forward::MAX_IN_FLIGHT
                            );
                        }
                        h.set_response_code(ResponseCode::ServFail);
                        let m = builder.build_no_records(h);
                        response.send_response(m).await.unwrap_or_else(|_| h.into())
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugnet::names::Record as NameRecord;

    fn table() -> Table {
        let r = NameRecord {
            format: plugnet::names::FORMAT.into(),
            boot_id: plugnet::names::boot_id_hex(),
            network: "n".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            domain: "dns.plugnet".into(),
            names: vec!["web".into()],
            addresses: vec![
                "10.172.0.2".parse().unwrap(),
                "fd00:172::2".parse().unwrap(),
            ],
            nameservers: vec!["10.172.0.1".parse().unwrap()],
            docker_sandbox: None,
        };
        Table::build([r].iter(), [].iter())
    }

    fn answer(qname: &str, qtype: RecordType) -> Answer {
        let t = table();
        let net = t.nets.get("n").unwrap();
        local_answer(net, &Name::from_ascii(qname).unwrap(), qtype)
    }

    #[test]
    fn what_each_name_gets() {
        match answer("Web.dns.plugnet.", RecordType::A) {
            Answer::Records(rs) => assert_eq!(rs.len(), 1),
            _ => panic!("web.dns.plugnet A"),
        }
        match answer("web", RecordType::AAAA) {
            Answer::Records(rs) => assert_eq!(rs.len(), 1),
            _ => panic!("web AAAA"),
        }
        // A name with no record of that type: NOERROR, no records.
        match answer("web", RecordType::MX) {
            Answer::Records(rs) => assert!(rs.is_empty()),
            _ => panic!("web MX"),
        }
        match answer("db.dns.plugnet", RecordType::A) {
            Answer::Miss { label, then } => {
                assert_eq!(label, "db");
                assert!(matches!(*then, Answer::Code(ResponseCode::NXDomain)));
            }
            _ => panic!("db.dns.plugnet"),
        }
        match answer("db", RecordType::A) {
            Answer::Miss { then, .. } => assert!(matches!(*then, Answer::Forward)),
            _ => panic!("db"),
        }
        assert!(matches!(
            answer("a.b.dns.plugnet", RecordType::A),
            Answer::Code(ResponseCode::NXDomain)
        ));
        assert!(matches!(
            answer("example.com", RecordType::A),
            Answer::Forward
        ));
    }
}
