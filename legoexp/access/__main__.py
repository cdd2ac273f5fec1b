from legoexp.access.admin import main
from legoexp.ops.command import run_main

run_main(main)
