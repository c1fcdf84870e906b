import os

from pystorm import Bolt


class Shout(Bolt):
    def process(self, tup):
        self.emit([tup.values[0].upper(), os.getpid()])


Shout().run()
