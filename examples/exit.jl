# A page that calls exit(): the response so far is sent, then the worker
# process exits (telling the master `EXITING page called exit()`), and the
# master starts a replacement. Here to test exactly that.
println("Content-Type: text/plain")
println()
println("goodbye from worker ", getpid())
exit()
