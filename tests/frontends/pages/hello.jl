# The same answer from every front end, with a header of its own.
print("Content-Type: text/plain\r\nX-Page: hello\r\n\r\nHello, world!\n")
