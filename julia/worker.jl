# julia-fcgi worker: a FastCGI responder for Julia pages.
#
#   julia --startup-file=no --history-file=no --color=no worker.jl
#
# fd 0 must be the FastCGI listening socket; see INTERFACE.md for the control
# channel and environment, README.md for how pages are run.
include(joinpath(@__DIR__, "src", "JuliaFCGI.jl"))
JuliaFCGI.main()
