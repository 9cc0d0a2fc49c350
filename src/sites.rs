//! Cross-Node data-plane routing (stub).
use bb_runtime::envelope::WireEnvelope;
use bb_runtime::node::Node;

pub(crate) struct Sites;
impl Sites {
    pub(crate) fn bridge(_node: &mut Node) -> Self {
        Sites
    }
    pub(crate) fn outbound(&self, _env: &mut WireEnvelope) {}
    pub(crate) fn inbound(&self, _env: &mut WireEnvelope) {}
}
