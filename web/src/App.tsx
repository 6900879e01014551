import { MouseEvent, useEffect, useState } from 'react';
import { Chat } from './pages/Chat';
import { Replay } from './pages/Replay';
import { Dashboard } from './pages/Dashboard';
import { Review } from './pages/Review';
import { AdminGate } from './pages/AdminGate';

const PAGES = [
  { path: '/', label: 'Chat' },
  { path: '/replay', label: 'Replay' },
  { path: '/dashboard', label: 'Dashboard' },
  { path: '/review', label: 'Review' },
];

export function App() {
  const [path, setPath] = useState(() => location.pathname);
  useEffect(() => {
    const onPop = () => setPath(location.pathname);
    window.addEventListener('popstate', onPop);
    return () => window.removeEventListener('popstate', onPop);
  }, []);
  const go = (event: MouseEvent<HTMLAnchorElement>, to: string) => {
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    history.pushState(null, '', to);
    setPath(to);
  };
  let page;
  switch (path) {
    case '/replay':
      page = <AdminGate><Replay /></AdminGate>;
      break;
    case '/dashboard':
      page = <AdminGate><Dashboard /></AdminGate>;
      break;
    case '/review':
      page = <AdminGate><Review /></AdminGate>;
      break;
    default:
      page = <Chat />;
  }
  return (
    <>
      <a href="#main" className="skip">
        Skip to content
      </a>
      <header>
        <nav aria-label="Pages">
          {PAGES.map((p) => (
            <a key={p.path} href={p.path} onClick={(e) => go(e, p.path)} aria-current={path === p.path ? 'page' : undefined}>
              {p.label}
            </a>
          ))}
        </nav>
      </header>
      <main id="main">{page}</main>
    </>
  );
}
