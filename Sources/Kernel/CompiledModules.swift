import Balancing
import CORS
import HTTP
import Inference
import KernelCore
import KernelMetrics
import Routing
import Status
import UWSGI

/// The compiled-in modules, as nginx's `ngx_modules[]`: Swift has no static constructors, so the list is written
/// here by hand.
///
/// Order matters twice: modules register in this order, so a module that uses what another contributes comes after
/// it (routing last: its locations use the handlers of the protocol and inference modules); and filters of one
/// phase run in this order.
let compiledModules: [ModuleDescriptor] = [
    ModuleDescriptor(HTTPModule.self),
    ModuleDescriptor(BalancingModule.self),
    ModuleDescriptor(UWSGIModule.self),
    ModuleDescriptor(InferenceModule.self),
    ModuleDescriptor(CORSModule.self),
    ModuleDescriptor(MetricsModule.self),
    ModuleDescriptor(StatusModule.self),
    ModuleDescriptor(RoutingModule.self),
]
