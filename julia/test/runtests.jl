# julia-fcgi worker tests:  /usr/local/bin/julia julia/test/runtests.jl
#
# units.jl      wire format, CGI headers, log escaping, ENV switching
# pages.jl      page analysis (handler / compiled / fallback) and the CGI
#               runtime, in process
# params.jl     CGI variable fix-ups and kept connections, in process
# deadlines.jl  a request's deadlines and parked connections, in process
# trace.jl      what a page's function calls, recorded for the pool sysimage
# roundtrip.jl  real worker processes on a unix socket, raw FastCGI
# stdio.jl      a page's fds 0-2 and streams, against a real worker
# image.jl      on the pool sysimage only: process state is the process's
using Test

# On the pool sysimage (`julia -J IMAGE runtests.jl`, tests/sysimage.rs) the
# worker's modules are the image's: test those, not a fresh copy.
const FROM_IMAGE = isdefined(Main, :JuliaFCGI)
FROM_IMAGE || include(joinpath(@__DIR__, "..", "src", "JuliaFCGI.jl"))
include("client.jl")

const ROUNDTRIP_ENABLED = get(ENV, "JULIA_FCGI_TEST_UNITS_ONLY", "") != "1"
ROUNDTRIP_ENABLED && include("roundtrip.jl")
ROUNDTRIP_ENABLED && include("stdio.jl")
# Worker processes warm up (a few seconds each) while the in-process tests run.
const ROUNDTRIP = ROUNDTRIP_ENABLED ? start_roundtrip_workers() : nothing
# Whatever happens in the tests, leave no worker behind.
ROUNDTRIP === nothing ||
    atexit(() -> foreach(w -> process_running(w.proc) && kill(w.proc), ROUNDTRIP[2:4]))
const STDIO = ROUNDTRIP_ENABLED ? start_stdio_worker() : nothing
STDIO === nothing || atexit(() -> process_running(STDIO[2].proc) && kill(STDIO[2].proc))

@testset "julia-fcgi worker" begin
    include("units.jl")
    include("pages.jl")
    include("params.jl")
    include("deadlines.jl")
    include("trace.jl")
    FROM_IMAGE && include("image.jl")
    ROUNDTRIP_ENABLED && run_roundtrip_tests()
    ROUNDTRIP_ENABLED && run_stdio_tests()
end
