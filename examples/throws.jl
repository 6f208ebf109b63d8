# A page that fails: the client gets a 500 (with the exception and backtrace
# only when JULIA_FCGI_DEV=1), the julia-fcgi log gets one error entry with
# the backtrace, nginx's error log a one-line hint. The worker carries on.
println("Content-Type: text/plain")
println()
println("this line is never seen: the 500 replaces the output")
error("this page always fails")
