"""Start the studio in the browser: python app.py [--model PATH|demo] [--port 7860] …"""
import sys

from studio.ui.app import main

if __name__ == "__main__":
    sys.exit(main())
