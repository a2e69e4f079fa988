from imgclf.cli import main

# The guard matters: multiprocessing's spawn start method re-imports the main module in workers.
if __name__ == "__main__":
    raise SystemExit(main())
