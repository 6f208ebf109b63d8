# A page that throws: the worker answers 500 with its generic body.
print("Content-Type: text/plain\r\n\r\npartial output that must not be sent\n")
error("this page always fails")
