# julia-fcgi worker: a FastCGI responder for Julia pages.
#
#   julia --startup-file=no --history-file=no --color=no worker.jl
#   julia -J julia-fcgi.so --startup-file=no --history-file=no --color=no worker.jl
#
# fd 0 must be the FastCGI listening socket; see INTERFACE.md for the control
# channel and environment, README.md for how pages are run.
#
# Started on the pool sysimage (`julia-fcgi sysimage build`), the worker's
# modules are already loaded, compiled, from the image: including the sources
# again would replace them with an uncompiled copy. The master uses an image
# only when it was built from these very sources (julia/build/README.md).
isdefined(Main, :JuliaFCGI) || include(joinpath(@__DIR__, "src", "JuliaFCGI.jl"))
JuliaFCGI.main()
