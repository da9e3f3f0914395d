from vcam_talker.cli import main

raise SystemExit(main())
