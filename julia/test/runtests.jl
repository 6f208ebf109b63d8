# julia-fcgi worker tests:  /usr/local/bin/julia julia/test/runtests.jl
#
# units.jl      wire format, CGI headers, log escaping, ENV switching
# pages.jl      page analysis (handler / compiled / fallback) and the CGI
#               runtime, in process
# roundtrip.jl  real worker processes on a unix socket, raw FastCGI
using Test

include(joinpath(@__DIR__, "..", "src", "JuliaFCGI.jl"))
include("client.jl")

const ROUNDTRIP_ENABLED = get(ENV, "JULIA_FCGI_TEST_UNITS_ONLY", "") != "1"
ROUNDTRIP_ENABLED && include("roundtrip.jl")
# Worker processes warm up (a few seconds each) while the in-process tests run.
const ROUNDTRIP = ROUNDTRIP_ENABLED ? start_roundtrip_workers() : nothing
# Whatever happens in the tests, leave no worker behind.
ROUNDTRIP === nothing ||
    atexit(() -> foreach(w -> process_running(w.proc) && kill(w.proc), ROUNDTRIP[2:4]))

@testset "julia-fcgi worker" begin
    include("units.jl")
    include("pages.jl")
    ROUNDTRIP_ENABLED && run_roundtrip_tests()
end
