# The seed's program: Tornado's hello world, one process, one IOLoop.
import sys

import tornado.ioloop
import tornado.web


class MainHandler(tornado.web.RequestHandler):
    def get(self):
        self.write("Hello, world")


application = tornado.web.Application([
    (r"/", MainHandler),
])

if __name__ == "__main__":
    application.listen(int(sys.argv[1]) if len(sys.argv) > 1 else 8888, address="127.0.0.1")
    tornado.ioloop.IOLoop.current().start()
